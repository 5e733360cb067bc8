# %% [markdown]
# # Tutorial 01 — Relation matrices: the structure the student distils
#
# **Run it:** `python tutorials/01_relation_matrices.py` (about a second of work; no torch needed).
# Fast mode, `REBALANCE_FAST=1`, changes nothing here (everything is already tiny); it exists so that every
# tutorial takes the same switch. Figures go to `tutorials/out/01_relation_matrices/`
# (or `$REBALANCE_TUTORIAL_OUT/01_relation_matrices/`).
#
# The paper keeps the usual image–text matching losses and adds *structure-aware distillation*: inside a
# batch, how similar each item is to every other item (a **relation matrix**) should look like what two frozen
# single-modality teachers think. This tutorial builds those matrices by hand, then with the package:
#
# 1. the scaled cosine relation `S(x)_ij = n(x_i) · n(x_j) / τ2`, with `n(x) = x / ||x||`;
# 2. why only the **off-diagonal** entries count;
# 3. what the temperature `τ2` does;
# 4. the **teacher blend** `E = λ·S_T + (1 − λ)·S_I`, and what λ means;
# 5. heatmaps of teacher, blend and student relations.
#
# Everything comes from `rebalance_ref.relations` (NumPy). Its torch mirror `rebalance_torch.relations` has the
# same functions with the same arguments; tutorial 02 checks that they agree. The formulas, with their
# gradients, are collected in `docs/formulas.md`.

# %%
import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance_ref.distances import mae
from rebalance_ref.relations import cosine_relation, fuse_teachers, normalize, offdiag

OUT = out_dir("01_relation_matrices")
rng = np.random.default_rng(0)  # every number below follows from this seed
np.set_printoptions(precision=3, suppress=True)
print(f"fast mode: {FAST}; figures in {OUT}")

# %% [markdown]
# ## 1. A relation matrix by hand
#
# Take a batch of B = 4 feature vectors of dimension D = 3. First scale every row to unit length, then take all
# dot products: entry (i, j) is the cosine between item i and item j. Dividing by a temperature τ2 sharpens
# (τ2 < 1) or flattens (τ2 > 1) the values. There is **no softmax**: the raw scaled cosines are compared.

# %%
banner("1. by hand")
x = rng.standard_normal((4, 3))  # (B, D) = (4, 3)
tau2 = 0.5

by_hand = np.zeros((4, 4))
for i in range(4):
    for j in range(4):
        xi = x[i] / np.sqrt(np.sum(x[i] ** 2))  # n(x_i)
        xj = x[j] / np.sqrt(np.sum(x[j] ** 2))  # n(x_j)
        by_hand[i, j] = np.sum(xi * xj) / tau2

S, grads = cosine_relation(x, tau2)  # every rebalance_ref formula returns (value, gradients)
print("S(x) by the package:\n", S)
print("largest difference to the loop:", np.abs(S - by_hand).max())
assert np.allclose(S, by_hand, rtol=1e-12, atol=1e-12)
print("gradients come along (tutorial 02 explains them):", {k: np.shape(v) for k, v in grads.items()})

# %% [markdown]
# A cosine does not care about length: scaling an item leaves its row of `S` unchanged. `normalize` is the
# package's `n(x)`.

# %%
x_scaled = x * np.array([[1.0], [10.0], [0.1], [3.0]])  # each item stretched by a different factor
assert np.allclose(cosine_relation(x_scaled, tau2)[0], S)
assert np.allclose(np.linalg.norm(normalize(x)[0], axis=1), 1.0)
print("relations are unchanged when items are rescaled; rows of n(x) have length 1")

# %% [markdown]
# ## 2. The diagonal carries no information
#
# `S_ii = n(x_i)·n(x_i)/τ2 = 1/τ2` for every item, whatever the features: it says nothing about the structure,
# and comparing it between student and teacher would only add a constant. So the method compares the
# **off-diagonal** entries, read row by row: `S[0,1], S[0,2], …, S[1,0], S[1,2], …`, a vector of length
# B(B − 1).

# %%
banner("2. off-diagonal")
print("diagonal:", np.diag(S), " 1/tau2 =", 1 / tau2)
assert np.allclose(np.diag(S), 1 / tau2)
off, _ = offdiag(S)
by_hand_off = [S[i, j] for i in range(4) for j in range(4) if i != j]  # row-major, skipping i == j
print(f"offdiag(S): {off.shape[0]} entries = B(B-1) = 4*3:", off)
assert np.array_equal(off, by_hand_off)
# S is symmetric, so each pair appears twice in the vector (once as (i, j), once as (j, i)):
assert np.allclose(S, S.T)

# %% [markdown]
# ## 3. The temperature τ2 scales everything
#
# `S` is proportional to 1/τ2. Halving τ2 doubles every entry, and so doubles any distance between two
# relation matrices built with the same τ2. Keep this in mind for tutorial 02: in the official code τ2 is
# learnable and unclamped, and since every distillation term shrinks as τ2 grows, gradient descent can lower
# the loss simply by raising τ2 — silently switching the distillation off.

# %%
banner("3. tau2")
taus = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
spread = [np.ptp(offdiag(cosine_relation(x, t)[0])[0]) for t in taus]
for t, s in zip(taus, spread, strict=True):
    print(f"tau2 = {t:<5}  range of off-diagonal relations = {s:7.3f}   (range x tau2 = {s * t:.3f})")
assert np.allclose(np.array(spread) * np.array(taus), spread[-2])  # spread * tau2 is constant

fig, ax = plt.subplots(figsize=(4.5, 3.2))
ax.loglog(taus, spread, "o-")
ax.set_xlabel("τ2")
ax.set_ylabel("range of off-diagonal S")
ax.set_title("S scales with 1/τ2")
save_figure(fig, OUT, "tau2_scaling.png")

# %% [markdown]
# ## 4. Two teachers, one blend
#
# The method has two frozen teachers that each see **one** modality: an image teacher with features `a_i` and a
# text teacher with features `b_i` for the same batch. Each gives a relation matrix, `S_I = S(a)` and
# `S_T = S(b)`. They disagree where the modalities carry different information. The distillation target is
# their blend
#
# `E = λ·S_T + (1 − λ)·S_I`   (λ weighs the **text** teacher; λ = 0 is the image teacher alone).
#
# To see the blend clearly we make a toy batch with an obvious structure: 8 items, each with a *colour* (2
# values) and a *position* (2 values). The image teacher sees both; the text teacher sees only the colour, as
# under the "text-poor" imbalance of tutorial 03, where captions often omit positions.

# %%
banner("4. teacher blend")
B = 8
colour = np.array([0, 0, 0, 0, 1, 1, 1, 1])
position = np.array([0, 0, 1, 1, 0, 0, 1, 1])
colour_dir = rng.standard_normal((2, 16))
position_dir = rng.standard_normal((2, 16))
img_feats = colour_dir[colour] + position_dir[position] + 0.3 * rng.standard_normal((B, 16))  # a: (B, 16)
txt_feats = colour_dir[colour] + 0.3 * rng.standard_normal((B, 16))  # b: (B, 16), no position

TAU2 = 1.0
S_I, _ = cosine_relation(img_feats, TAU2)
S_T, _ = cosine_relation(txt_feats, TAU2)
lam = 0.5
E, _ = fuse_teachers(S_T, S_I, lam)  # argument order: text teacher first, then image teacher
assert np.allclose(E, lam * S_T + (1 - lam) * S_I)
same_colour = colour[:, None] == colour[None, :]
same_both = same_colour & (position[:, None] == position[None, :])
off_mask = ~np.eye(B, dtype=bool)
for name, R in (("S_I (image teacher)", S_I), ("S_T (text teacher)", S_T), ("E, lambda = 0.5", E)):
    print(f"{name:22s} mean relation: same colour+position {R[same_both & off_mask].mean():.2f}, "
          f"same colour only {R[same_colour & ~same_both].mean():.2f}, different colour {R[~same_colour].mean():.2f}")


def heat(ax, R, title):
    """One relation matrix as a heatmap, diagonal greyed out (it never counts)."""
    shown = np.where(np.eye(len(R), dtype=bool), np.nan, R)
    im = ax.imshow(shown, cmap="viridis", vmin=-1 / TAU2, vmax=1 / TAU2)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
heat(axes[0], S_I, "S_I: image teacher\n(colour and position)")
heat(axes[1], S_T, "S_T: text teacher\n(colour only)")
im = heat(axes[2], E, f"E = {lam}·S_T + {1 - lam}·S_I")
fig.colorbar(im, ax=axes, shrink=0.8, label="n(x_i)·n(x_j) / τ2")
save_figure(fig, OUT, "teacher_relations.png")

# %% [markdown]
# ### λ slides between the teachers
#
# At λ = 0 the target is the image teacher's structure, at λ = 1 the text teacher's. In the official code (and
# here) λ is a learnable parameter, initialised at 0.5 and **unconstrained**: outside [0, 1] the blend
# extrapolates beyond either teacher (λ = 1.5 exaggerates what the text teacher adds).

# %%
lams = [-0.5, 0.0, 0.5, 1.0, 1.5]
fig, axes = plt.subplots(1, len(lams), figsize=(2.4 * len(lams), 2.6))
for ax, lam_k in zip(axes, lams, strict=True):
    E_k, g = fuse_teachers(S_T, S_I, lam_k)
    im = heat(ax, E_k, f"λ = {lam_k}")
    # dE/dλ = S_T - S_I, whatever λ is: the package returns sum(dE/dλ) as the gradient of E.sum()
    assert np.isclose(g["lam"], np.sum(S_T - S_I))
fig.colorbar(im, ax=axes, shrink=0.8, extend="both", label="E (clipped at ±1/τ2)")
save_figure(fig, OUT, "blend_over_lambda.png")
assert np.allclose(fuse_teachers(S_T, S_I, 0.0)[0], S_I) and np.allclose(fuse_teachers(S_T, S_I, 1.0)[0], S_T)

# %% [markdown]
# ## 5. The student's relations against the target
#
# The student computes the same kind of matrix from its own pair features `z` (in the paper, the fused [CLS]
# of each image–caption pair): `S_F = S(z)`. The structure distillation term KD is a distance between the
# off-diagonal entries of `S_F` and of `E`; the paper's distance is the mean absolute error. Tutorial 02 derives
# its gradient; here we look at which student is close to which target. A student that learnt only colours
# (like the text teacher) is close to the λ = 1 target; one that also learnt positions is close to λ = 0. At
# λ = 0.5 the target sits halfway, and both are about equally far: λ decides whose structure is taught.

# %%
banner("5. student vs target")
students = {
    "colour-only": colour_dir[colour] + 0.3 * rng.standard_normal((B, 16)),
    "colour+position": colour_dir[colour] + position_dir[position] + 0.3 * rng.standard_normal((B, 16)),
}
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
heat(axes[0], E, "target E (λ = 0.5)")
kd_table = {}
for ax, (name, z) in zip(axes[1:], students.items(), strict=True):
    S_F, _ = cosine_relation(z, TAU2)
    heat(ax, S_F, f"S_F: {name} student")
    for lam_k in (0.0, 0.5, 1.0):
        E_k, _ = fuse_teachers(S_T, S_I, lam_k)
        kd, _ = mae(offdiag(S_F)[0], offdiag(E_k)[0])
        assert np.isclose(kd, np.mean(np.abs(S_F[off_mask] - E_k[off_mask])))  # the same, by hand
        kd_table[name, lam_k] = kd
save_figure(fig, OUT, "student_vs_target.png")
print("KD = mean|offdiag S_F - offdiag E(lambda)|")
print(f"{'student':18s}" + "".join(f"  lambda={lam_k:<4}" for lam_k in (0.0, 0.5, 1.0)))
for name in students:
    print(f"{name:18s}" + "".join(f"  {kd_table[name, lam_k]:<11.3f}" for lam_k in (0.0, 0.5, 1.0)))
assert kd_table["colour-only", 1.0] < kd_table["colour-only", 0.0]
assert kd_table["colour+position", 0.0] < kd_table["colour+position", 1.0]

# %% [markdown]
# ## Exercises
#
# 1. Set `TAU2 = 0.1` in section 4 and rerun. Which numbers change, by how much, and which pictures change
#    (look at the colour bar)? Why does this make a learnable τ2 dangerous?
# 2. Give the text teacher the position too (add `position_dir[position]` to `txt_feats`). What happens to
#    `S_T − S_I`, and so to the gradient of anything with respect to λ?
# 3. Find by a loop over a grid of λ the λ that minimises KD for each of the two students of section 5. Is the
#    best λ always inside [0, 1]? (In training, λ is learnt only through KD — tutorial 02 shows why.)
# 4. `offdiag` reads row-major. Write the index of entry (i, j), i ≠ j, in the vector as a formula in i, j and
#    B, and check it against `offdiag(np.arange(B * B).reshape(B, B))`.
# 5. Replace the cosine by a plain dot product (no `n(·)`) in the loop of section 1 and scale one item by 10.
#    What would a student learn to do with feature norms if the relations were not normalised?
