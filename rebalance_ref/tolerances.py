"""Every numeric constant and tolerance the formulas, tests and verifiers use, by name, in one place.

Change a number here and every test that depends on it follows; never write a bare `1e-6` in a test.
"""

# --- constants of the formulas -------------------------------------------------------------------------------

# n(x) = x / max(||x||, NORM_EPS), row-wise: the one normalisation epsilon of both packages (torch's
# F.normalize uses the same rule and the same default).
NORM_EPS = 1e-12

# Geodesic mixup (rebalance_ref.mixup.slerp): the cosine between the two endpoints is clamped at -1 + SLERP_COS_CLAMP
# (antipodal rows have no unique geodesic and 1/sin θ would blow up), and rows closer than SLERP_MIN_ANGLE radians
# use the normalised lerp, which equals slerp up to O(θ²) there and has no 0/0.
SLERP_COS_CLAMP = 1e-6
SLERP_MIN_ANGLE = 1e-4

# --- finite differences (rebalance_ref.gradcheck) -----------------------------------------------------------------

# Central-difference step in float64: truncation error ~ h^2, rounding error ~ 1e-16 / h; 1e-6 balances them.
FD_STEP = 1e-6
# Largest accepted relative error ||analytic - numeric|| / max(||analytic||, ||numeric||, FD_FLOOR).
FD_REL_TOL = 1e-6
# Norm below which a gradient counts as zero (keeps the relative error finite for zero gradients).
FD_FLOOR = 1e-8

# Formulas with kinks (|.|, sorting) are checked with a smaller step at inputs that keep every kink at least
# KINK_GAP away, in the units of the kinked quantity (a difference, a gap between sorted values). A step moves
# those quantities by at most a few times KINKED_FD_STEP, so it never crosses a kink; the smaller step costs a
# little rounding error (~1e-16 / 1e-7 per entry), well inside FD_REL_TOL.
KINKED_FD_STEP = 1e-7
KINK_GAP = 2e-5

# --- NumPy reference vs torch mirror ---------------------------------------------------------------------------

# float64 values and gradients: both sides run the same arithmetic in a different order.
PARITY64_RTOL = 1e-9
PARITY64_ATOL = 1e-11
# float32 (for users comparing a float32 training run with the float64 reference).
PARITY32_RTOL = 1e-4
PARITY32_ATOL = 1e-5

# torch.autograd.gradcheck in float64 (its own defaults, named here so that they are visible).
GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-3

# --- identities (docs/design.md §2 facts) -------------------------------------------------------------------------

# A formula against an independent float64 oracle (SciPy, a Python loop over the definition).
ORACLE_RTOL = 1e-10

# Two float64 computations of a quantity that is mathematically exactly equal (e.g. KDI + KDT across lambda).
IDENTITY_RTOL = 1e-12

# --- checks of data for meaning (rebalance_ref.features) -----------------------------------------------------------

# Largest entry-wise difference between unit-length rows that still counts as "the same direction": a few float32
# rounding steps of an entry in [-1, 1]. Relations computed in float32 cannot tell such rows apart.
SAME_DIRECTION_ATOL = 1e-6
