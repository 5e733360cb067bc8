# %% [markdown]
# # Tutorial 02 — The losses and their gradients
#
# **Run it:** `python tutorials/02_losses_and_gradients.py` (a few seconds; imports torch for section 6).
# Fast mode, `REBALANCE_FAST=1`, runs the τ2 drift of section 8 for fewer steps; everything else is the same.
# Figures go to `tutorials/out/02_losses_and_gradients/` (or `$REBALANCE_TUTORIAL_OUT/02_losses_and_gradients/`).
#
# Tutorial 01 built relation matrices. Here are the losses the student trains on (docs/design.md §2), each from
# `rebalance_ref.losses` / `rebalance_ref.distances` (NumPy, returning `(value, gradients)`):
#
# | name | what it pulls together | package function |
# |---|---|---|
# | ITC | each image with its captions, both directions | `itc(v, t, tau, idx)` |
# | ITM | a 2-way "does this pair match?" classifier | `itm(logits, labels)` |
# | IIC / TTC | a student embedding with its teacher's projected feature | `single_contrast(x, teacher, tau, idx)` |
# | KD, KDI, KDT | relations: student vs blend, each teacher vs blend | `structure_distill`, `structure_terms` |
#
# Then we derive one backward pass by hand (KD with respect to the student features), check every gradient
# with finite differences and against torch autograd, and end with two facts that shape training: **λ is
# learnt only through KD**, and **a learnable τ2 drifts upward and switches the distillation off**.
# `docs/formulas.md` has every derivation in full.

# %%
import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure
from scipy.stats import wasserstein_distance

from rebalance_ref.distances import cumsum_l1, mae, mse, wasserstein
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.losses import itc, itm, single_contrast, structure_distill, structure_terms
from rebalance_ref.relations import cosine_relation, fuse_teachers, offdiag
from rebalance_ref.tolerances import FD_REL_TOL, KINKED_FD_STEP, PARITY64_ATOL, PARITY64_RTOL

OUT = out_dir("02_losses_and_gradients")
rng = np.random.default_rng(2)
np.set_printoptions(precision=4, suppress=True)
print(f"fast mode: {FAST}; figures in {OUT}")

# %% [markdown]
# ## 1. ITC with soft labels
#
# A batch of B image embeddings `v` and caption embeddings `t`; `idx[i]` is the image of row i. Several captions
# of one image can share a batch, so the target of row i is spread over all rows of the same image:
# `y_ij = [idx_i == idx_j] / #{k : idx_k == idx_i}`. With `s = n(v) n(t)ᵀ / τ`,
#
# `ITC = ½ · ( −mean_i Σ_j y_ij log softmax_j(s_i·)  −  mean_j Σ_i y_ji log softmax_i(s_·j) )`
#
# — image-to-text over the rows of `s`, text-to-image over its columns. We compute it with plain NumPy next to
# the package.

# %%
banner("1. ITC")
B, D = 5, 4
v = rng.standard_normal((B, D))
t = v + 0.8 * rng.standard_normal((B, D))  # captions roughly aligned with their images
idx = np.array([7, 7, 3, 5, 3])  # rows 0,1 show image 7; rows 2,4 image 3
tau = 0.2

y = (idx[:, None] == idx[None, :]).astype(float)
y /= y.sum(axis=1, keepdims=True)
print("soft labels y:\n", y)
vn = v / np.linalg.norm(v, axis=1, keepdims=True)
tn = t / np.linalg.norm(t, axis=1, keepdims=True)
s = vn @ tn.T / tau


def log_softmax_rows(a):
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


by_hand = 0.5 * (-(y * log_softmax_rows(s)).sum() / B - (y.T * log_softmax_rows(s.T)).sum() / B)
loss, grads = itc(v, t, tau, idx)
print(f"ITC by hand {by_hand:.6f}   itc() {loss:.6f}")
assert np.isclose(loss, by_hand, rtol=1e-12)
print("gradients returned for:", sorted(grads))

# %% [markdown]
# Image ids matter only through equality (which rows share an image), and `idx=None` means "every row its own
# image", the identity as labels.

# %%
assert np.isclose(itc(v, t, tau, idx)[0], itc(v, t, tau, idx + 100)[0])
assert np.isclose(itc(v, t, tau, None)[0], itc(v, t, tau, np.arange(B))[0])
print(f"ITC without repeated images: {itc(v, t, tau)[0]:.4f}; with rows 0,1 and 2,4 sharing an image: {loss:.4f}")

# %% [markdown]
# ## 2. IIC / TTC: one-way contrast to a teacher
#
# The teachers' features live in their own spaces (different sizes), so the trainer passes each through a
# trainable linear projection to the student's dimension; then `single_contrast` is the image-to-text half of
# ITC with the projected teacher feature in place of the caption. IIC uses the image embedding `v` and the image
# teacher; TTC the text embedding `t` and the text teacher. There is no teacher-to-student direction: the teacher
# is a fixed target.
#
# Because the soft labels are symmetric, ITC is exactly the mean of the two one-way contrasts — a neat check.

# %%
banner("2. IIC / TTC")
one_way_v, _ = single_contrast(v, t, tau, idx)
one_way_t, _ = single_contrast(t, v, tau, idx)
print(f"single_contrast(v, t) = {one_way_v:.4f}, single_contrast(t, v) = {one_way_t:.4f}, mean = "
      f"{(one_way_v + one_way_t) / 2:.4f}, itc = {loss:.4f}")
assert np.isclose(loss, 0.5 * (one_way_v + one_way_t), rtol=1e-12)

# %% [markdown]
# ## 3. ITM in one line
#
# The fusion encoder's [CLS] for a pair goes through a small head to two logits, (no match, match). ITM is the
# plain 2-way cross-entropy over B positives and 2B sampled hard negatives (the sampling lives in the trainer).

# %%
banner("3. ITM")
logits = rng.standard_normal((6, 2))
labels = np.array([1, 1, 0, 0, 0, 0])
value, g = itm(logits, labels)
by_hand = -np.mean(log_softmax_rows(logits)[np.arange(6), labels])
print(f"ITM {value:.4f} (by hand {by_hand:.4f}); d/dlogits = (softmax - onehot) / N:\n", g["logits"])
assert np.isclose(value, by_hand)

# %% [markdown]
# ## 4. The structure distances
#
# KD compares the off-diagonal relations of the student with the teacher blend `E` through a distance `d`. The
# paper uses the mean absolute error; the official code also offers others, under names that mislead:
#
# * `mae` — mean |x − y| (the default);
# * `mse` — mean (x − y)²;
# * `cumsum_l1` — mean |cumsum x − cumsum y| over the flattened vectors: the official code calls it **"kl"**,
#   but it is no KL divergence (there are no distributions; the order of entries matters);
# * `wasserstein` — per row, the 1-D Wasserstein-1 distance between two weighted sets of values (the
#   official **"wd"**), which SciPy computes too.

# %%
banner("4. distances")
x = rng.standard_normal(12)
y_ = rng.standard_normal(12)
print(f"mae {mae(x, y_)[0]:.4f} = {np.mean(np.abs(x - y_)):.4f} by hand")
print(f"mse {mse(x, y_)[0]:.4f} = {np.mean((x - y_) ** 2):.4f} by hand")
print(f"cumsum_l1 {cumsum_l1(x, y_)[0]:.4f} = {np.mean(np.abs(np.cumsum(x) - np.cumsum(y_))):.4f} by hand")
assert np.isclose(mae(x, y_)[0], np.mean(np.abs(x - y_)))
assert np.isclose(cumsum_l1(x, y_)[0], np.mean(np.abs(np.cumsum(x) - np.cumsum(y_))))
# "kl" depends on the order of the entries, a real distance between sets of values would not:
perm = rng.permutation(12)
print(f"cumsum_l1 after shuffling both vectors the same way: {cumsum_l1(x[perm], y_[perm])[0]:.4f}; "
      f"mae: {mae(x[perm], y_[perm])[0]:.4f} (unchanged)")

X, Y, W = rng.standard_normal((3, 6)), rng.standard_normal((3, 6)), rng.uniform(0.1, 1.0, (3, 6))
scipy_rows = [wasserstein_distance(X[r], Y[r], W[r], W[r]) for r in range(3)]
print(f"wasserstein {wasserstein(X, Y, W)[0]:.6f}; mean of SciPy's rows {np.mean(scipy_rows):.6f}")
assert np.isclose(wasserstein(X, Y, W)[0], np.mean(scipy_rows), rtol=1e-10)

# %% [markdown]
# ## 5. Structure distillation, and one backward pass derived by hand
#
# With student pair features `z` (B, D), teacher features `a` (image) and `b` (text):
# `S_F = S(z)`, `S_I = S(a)`, `S_T = S(b)`, `E = λ S_T + (1 − λ) S_I`, and
# `KD = d(offdiag S_F, offdiag E)`, `KDI = d(offdiag S_I, offdiag E)`, `KDT = d(offdiag S_T, offdiag E)`.
#
# Now the gradient of KD (with `d = mae`) with respect to `z`, by the chain rule, one step at a time:
#
# 1. `KD = (1/N) Σ_{i≠j} |S_F[i,j] − E[i,j]|`, N = B(B − 1), so
#    `G = ∂KD/∂S_F` has `G[i,j] = sign(S_F[i,j] − E[i,j]) / N` off the diagonal and 0 on it.
# 2. `S_F = u uᵀ / τ2` with `u = n(z)`: `u` appears on both sides, so `∂KD/∂u = (G + Gᵀ) u / τ2`.
# 3. `u = z / ||z||` row-wise: the Jacobian of a normalisation projects away the component along `u` and divides
#    by the norm, `∂KD/∂z_i = (g_i − u_i (u_i · g_i)) / ||z_i||` with `g_i = ∂KD/∂u_i`.
#
# `structure_terms` returns the three terms and the gradient of each; we compare its `z` gradient of KD with
# these three lines.

# %%
banner("5. KD backward by hand")
B = 6
z = rng.standard_normal((B, 8))
a = rng.standard_normal((B, 10))  # image teacher features (its own width)
b = rng.standard_normal((B, 7))  # text teacher features
lam, tau2 = 0.3, 0.5

terms, term_grads = structure_terms(z, a, b, lam, tau2, distance="mae")
print("KD, KDI, KDT:", {k: round(val, 4) for k, val in terms.items()})

S_F, _ = cosine_relation(z, tau2)
E, _ = fuse_teachers(cosine_relation(b, tau2)[0], cosine_relation(a, tau2)[0], lam)
off = ~np.eye(B, dtype=bool)
N = B * (B - 1)
G = np.where(off, np.sign(S_F - E), 0.0) / N  # step 1: dKD/dS_F
norms = np.linalg.norm(z, axis=1, keepdims=True)
u = z / norms
g_u = (G + G.T) @ u / tau2  # step 2: dKD/du
g_z = (g_u - u * np.sum(u * g_u, axis=1, keepdims=True)) / norms  # step 3: dKD/dz
err = np.abs(g_z - term_grads["kd"]["z"]).max()
print(f"largest difference between the hand-derived dKD/dz and the package's: {err:.2e}")
assert np.allclose(g_z, term_grads["kd"]["z"], rtol=1e-10, atol=1e-14)

# The teachers are constants, so KDI and KDT do not depend on z at all:
assert not term_grads["kdi"]["z"].any() and not term_grads["kdt"]["z"].any()
print("dKDI/dz and dKDT/dz are exactly zero: those two terms train only lambda and tau2")

# %% [markdown]
# ## 6. Check every gradient by finite differences
#
# `rebalance_ref.gradcheck.gradient_errors` perturbs each input entry by ±h and compares the central difference
# with the analytic gradient (contracted with a random upstream vector so that every output entry matters). It
# reports a relative error per argument; ours should be far below `FD_REL_TOL`. |·| has a kink at 0, so for
# `mae`, `cumsum_l1` and `wasserstein` we use the smaller `KINKED_FD_STEP` (random inputs keep every difference
# far from 0 at that scale).

# %%
banner("6. finite differences")
checks = {
    "itc": (itc, {"v": v[:5], "t": t[:5], "tau": 0.2, "idx": idx}),
    "single_contrast": (single_contrast, {"x": v[:5], "teacher": t[:5], "tau": 0.2, "idx": idx}),
    "itm": (itm, {"logits": logits, "labels": labels}),
}
for distance in ("mae", "mse", "cumsum_l1", "wasserstein"):
    checks[f"structure_distill[{distance}]"] = (
        structure_distill,
        {"z": z, "img_teacher": a, "txt_teacher": b, "lam": lam, "tau2": tau2, "distance": distance},
    )
for name, (fn, inputs) in checks.items():
    errors = gradient_errors(fn, inputs, step=KINKED_FD_STEP if "structure" in name else 1e-6)
    print(f"{name:32s}" + "  ".join(f"{k}: {e:.1e}" for k, e in errors.items()))
    assert max(errors.values()) < FD_REL_TOL, (name, errors)

# %% [markdown]
# ## 7. The same losses in torch, and autograd agrees
#
# `rebalance_torch.losses` mirrors `rebalance_ref.losses` name for name and argument for argument, returning a
# tensor; autograd supplies the gradient. In float64 the two agree to rounding.

# %%
banner("7. torch autograd")
import torch  # noqa: E402  (torch only from here on)

from rebalance_ref.threads import set_threads  # noqa: E402
from rebalance_torch import losses as torch_losses  # noqa: E402

set_threads(1)
torch.manual_seed(0)


def as_t(arr, grad=False):
    return torch.tensor(np.asarray(arr), dtype=torch.float64, requires_grad=grad)


z_t, lam_t, tau2_t = as_t(z, True), as_t(lam, True), as_t(tau2, True)
value_t = torch_losses.structure_distill(z_t, as_t(a), as_t(b), lam_t, tau2_t, distance="mae")
value_t.backward()
value_np, grads_np = structure_distill(z, a, b, lam, tau2, distance="mae")
print(f"structure_distill: NumPy {value_np:.10f}, torch {value_t.item():.10f}")
for name, tensor in (("z", z_t), ("lam", lam_t), ("tau2", tau2_t)):
    diff = np.abs(tensor.grad.numpy() - grads_np[name]).max()
    print(f"  d/d{name:5s} largest |NumPy - torch| = {diff:.1e}")
    np.testing.assert_allclose(tensor.grad.numpy(), grads_np[name], rtol=PARITY64_RTOL, atol=PARITY64_ATOL)

v_t, t_t = as_t(v, True), as_t(t, True)
torch_losses.itc(v_t, t_t, tau, idx).backward()
np.testing.assert_allclose(v_t.grad.numpy(), itc(v, t, tau, idx)[1]["v"], rtol=PARITY64_RTOL, atol=PARITY64_ATOL)
print("itc: gradients of v agree too")
# torch's own finite-difference checker on the torch side:
assert torch.autograd.gradcheck(lambda vv: torch_losses.itc(vv, as_t(t), tau, idx), (as_t(v, True),))
print("torch.autograd.gradcheck(itc) passed")

# %% [markdown]
# ## 8. Two facts that shape training
#
# **Fact 1: λ is learnt only through KD.** With constant teachers, `S_I − E = λ (S_I − S_T)` and
# `S_T − E = (1 − λ)(S_T − S_I)`. For `mae`, with `m = mean |offdiag (S_T − S_I)|`,
# `KDI = |λ| m` and `KDT = |1 − λ| m`, so `KDI + KDT = m`, a **constant for λ in [0, 1]** — those two terms push
# λ nowhere inside the interval and act as a barrier outside it. Only KD, which involves the student, moves λ.
# (For `mse` the sum is `(λ² + (1 − λ)²) m₂`, which pulls λ toward ½.)

# %%
banner("8a. lambda")
lams = np.linspace(-0.5, 1.5, 81)
curves = {k: [] for k in ("kd", "kdi", "kdt")}
for lam_k in lams:
    values, _ = structure_terms(z, a, b, lam_k, tau2, distance="mae")
    for k in curves:
        curves[k].append(values[k])
curves = {k: np.array(vals) for k, vals in curves.items()}
S_I, S_T = cosine_relation(a, tau2)[0], cosine_relation(b, tau2)[0]
m = np.mean(np.abs(offdiag(S_T)[0] - offdiag(S_I)[0]))
inside = (lams >= 0) & (lams <= 1)
print(f"m = {m:.4f}; KDI + KDT over lambda in [0, 1]: min {np.min((curves['kdi'] + curves['kdt'])[inside]):.4f}, "
      f"max {np.max((curves['kdi'] + curves['kdt'])[inside]):.4f}")
assert np.allclose((curves["kdi"] + curves["kdt"])[inside], m, rtol=1e-12)
assert np.allclose(curves["kdi"] + curves["kdt"], (np.abs(lams) + np.abs(1 - lams)) * m, rtol=1e-12)

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(lams, curves["kdi"], label="KDI")
ax.plot(lams, curves["kdt"], label="KDT")
ax.plot(lams, curves["kdi"] + curves["kdt"], "k--", label="KDI + KDT")
ax.plot(lams, curves["kd"], label="KD (student)")
ax.axvspan(0, 1, color="0.9", zorder=-1)
ax.set_xlabel("λ")
ax.set_ylabel("term (mae)")
ax.set_title("KDI + KDT is flat on [0, 1]: only KD moves λ")
ax.legend(fontsize=8)
save_figure(fig, OUT, "kd_terms_over_lambda.png")

# %% [markdown]
# **Fact 2: every KD term scales with 1/τ2.** Every relation is divided by τ2, and `mae` is homogeneous, so
# `KD(τ2) = KD(1) / τ2` and `∂KD/∂τ2 = −KD / τ2 < 0`, always. A learnable, unclamped τ2 (as in the official code)
# therefore only grows under gradient descent, and the distillation fades without anyone noticing. Below,
# gradient descent on τ2 alone, with the package's gradient, starting from τ2 = 0.1.

# %%
banner("8b. tau2 drift")
kd_terms, kd_grads = structure_terms(z, a, b, lam, tau2, distance="mae")
for k in kd_terms:
    assert np.isclose(kd_grads[k]["tau2"], -kd_terms[k] / tau2, rtol=1e-10)
print("dTerm/dtau2 = -Term/tau2 for KD, KDI and KDT")

steps = 60 if FAST else 400
lr = 0.002
tau2_k, trace_tau2, trace_loss = 0.1, [], []
for _ in range(steps):
    value_k, grads_k = structure_distill(z, a, b, lam, tau2_k, distance="mae", weights={"kd": 2.0})
    trace_tau2.append(tau2_k)
    trace_loss.append(value_k)
    tau2_k -= lr * grads_k["tau2"]  # plain SGD on tau2 only
print(f"after {steps} steps: tau2 {trace_tau2[0]:.3f} -> {trace_tau2[-1]:.3f}, "
      f"loss {trace_loss[0]:.3f} -> {trace_loss[-1]:.3f}")
assert trace_tau2[-1] > trace_tau2[0] and trace_loss[-1] < trace_loss[0]

fig, ax1 = plt.subplots(figsize=(5.5, 3.5))
ax1.plot(trace_tau2, color="C0")
ax1.set_xlabel("step (SGD on τ2 alone)")
ax1.set_ylabel("τ2", color="C0")
ax2 = ax1.twinx()
ax2.plot(trace_loss, color="C3")
ax2.set_ylabel("2·KD + KDI + KDT", color="C3")
ax1.set_title("a learnable τ2 grows and anneals the distillation")
save_figure(fig, OUT, "tau2_drift.png")

# %% [markdown]
# ## Exercises
#
# 1. Repeat section 5 for `distance="mse"`: which step of the derivation changes, and how?
# 2. In section 8a, switch to `mse` and find the λ that minimises KDI + KDT. Prove it is ½ whatever the teachers.
# 3. Change `idx` in section 1 so that all five rows show the same image. What is ITC, and what is its gradient?
#    Why is that the right answer?
# 4. `wasserstein` per row is the area between two CDFs. Draw the two CDFs of row 0 of section 4 with
#    `plt.step` and shade the area; compare it with `wasserstein_distance`.
# 5. Propose a fix for fact 2 (clamp τ2, fix it, or normalise the terms) and show with the loop of 8b that
#    τ2 no longer drifts. What does each fix cost?
