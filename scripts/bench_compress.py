"""Lossless compression of binarized images: a trained model's coded bits/dim against its bound, and the
everyday compressors on the same images, with compress/decompress images/s; prints JSON.

The images are the run's test split as its model sees it (Fashion-MNIST binarized once by the run's
evaluation protocol for the demo VAE).  The model codes them in one chain (:mod:`vaegen.runs.compression`);
its file is checked to decode bit for bit.  Beside it, on the very same binary images: gzip, bz2 and
lzma (Python's standard library, strongest presets) on the pixels as bytes (one per pixel) and as
packed bits (eight pixels per byte), and PNG (Pillow, 1-bit, optimized) one file per image and as one
sheet of all images.  bits/dim = bits of the output / (images x pixels).  Speeds are wall-clock images/s
of the whole set: the model's after a first, compiling pass ("warm"; the first pass's own time is
``cold``), the others single-threaded.

    python -m vaegen.cli train --config vae_mlp_fmnist --workdir /tmp/coding-vae
    python scripts/bench_compress.py --workdir /tmp/coding-vae                  # the 10,000 test images
    python scripts/bench_compress.py --workdir /tmp/coding-vae --max-examples 1000
    python scripts/bench_compress.py --kinds                # every kind of model, tiny runs on 8x8 digits
    python scripts/bench_compress.py --kinds --only dvae,dvae_bernoulli,dvae_16x4     # some of them

``--kinds`` trains tiny runs of each kind of model on scikit-learn's 8x8 digits in a temporary
directory (a VAE, two stochastic layers, an AE with N(0, I), a fitted mixture and a flow over its
codes, a WAE, a VQ-VAE with its code prior, MADE, discrete VAEs with categorical and Bernoulli z) and
codes the digits' 297 test images with each: coded bits/dim against each one's bound on the same
images.  For a discrete z it also measures what the coder's 24-bit probabilities cost: the coded bits
less the information content of what was coded, -log2 p(x|z) - log2 p(z) + log2 q(z|x) at the z's the
chain popped, summed in float64 from the model's exact probabilities.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

import jax.numpy as jnp

import vaegen
from vaegen.coding import ans, coders
from vaegen.config import loading
from vaegen.runs import compression
from vaegen.model import code_prior as code_prior_model
from vaegen.runs.recipes import recipe


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def model_row(run, x, *, repeats: int, samples: int | None, coder: str | None = None) -> dict:
    """The model's file: size against its bound, round trip checked, cold and warm speeds."""
    (data, stats), cold_c = _timed(lambda: compression.compress_with_stats(run, x, coder=coder))
    back, cold_d = _timed(lambda: compression.decompress(run, data))
    if not np.array_equal(back, x):
        raise AssertionError("the model's file did not decode to the images")
    warm_c = min(_timed(lambda: compression.compress(run, x, coder=coder))[1] for _ in range(repeats))
    warm_d = min(_timed(lambda: compression.decompress(run, data))[1] for _ in range(repeats))
    result = compression.report(run, x, data, samples=samples, stats=stats)
    n = x.shape[0]
    result["speed"] = {"compress_images_per_s": n / warm_c, "decompress_images_per_s": n / warm_d,
                       "compress_cold_s": cold_c, "decompress_cold_s": cold_d,
                       "compress_warm_s": warm_c, "decompress_warm_s": warm_d}
    return result


def _pack(images: np.ndarray) -> bytes:
    return np.packbits(images.reshape(images.shape[0], -1), axis=1).tobytes()


def _unpack(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    n, dims = shape[0], math.prod(shape[1:])
    bits = np.unpackbits(np.frombuffer(data, np.uint8).reshape(n, -1), axis=1)[:, :dims]
    return bits.reshape(shape)


def everyday(x: np.ndarray) -> dict:
    """gzip, bz2, lzma on bytes and packed bits; PNG per image and as one sheet.  ``x`` binary [N, H, W, 1]."""
    bits = x.astype(np.uint8)
    n, dims = bits.shape[0], math.prod(bits.shape[1:])
    out = {}
    streams = {"bytes": (bits.tobytes(), lambda d: np.frombuffer(d, np.uint8).reshape(bits.shape)),
               "packed_bits": (_pack(bits), lambda d: _unpack(d, bits.shape))}
    codecs = {"gzip": (lambda d: gzip.compress(d, 9), gzip.decompress),
              "bz2": (lambda d: bz2.compress(d, 9), bz2.decompress),
              "lzma": (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress)}
    for cname, (enc, dec) in codecs.items():
        for sname, (raw, restore) in streams.items():
            packed = sname == "packed_bits"
            coded, tc = _timed(lambda: enc(_pack(bits) if packed else bits.tobytes()))
            decoded, td = _timed(lambda: restore(dec(coded)))
            assert np.array_equal(decoded, bits), (cname, sname)
            out[f"{cname} ({sname.replace('_', ' ')})"] = _row(len(coded), n, dims, tc, td)

    def png(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image.astype(bool)).save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def unpng(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("1"), np.uint8)

    h, w = bits.shape[1:3]
    files, tc = _timed(lambda: [png(im[..., 0]) for im in bits])
    decoded, td = _timed(lambda: np.stack([unpng(f) for f in files])[..., None])
    assert np.array_equal(decoded, bits)
    out["PNG (one file per image)"] = _row(sum(len(f) for f in files), n, dims, tc, td)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)

    def sheet() -> bytes:
        canvas = np.zeros((rows * h, cols * w), np.uint8)
        for i, im in enumerate(bits[..., 0]):
            r, c = divmod(i, cols)
            canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
        return png(canvas)

    def unsheet(data: bytes) -> np.ndarray:
        canvas = unpng(data)
        return np.stack([canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w]
                         for i in range(n)])[..., None]

    one, tc = _timed(sheet)
    decoded, td = _timed(lambda: unsheet(one))
    assert np.array_equal(decoded, bits)
    out[f"PNG (one sheet of {rows} x {cols} images)"] = _row(len(one), n, dims, tc, td)
    return out


def _row(size: int, n: int, dims: int, tc: float, td: float) -> dict:
    return {"bytes": size, "bits_per_dim": 8 * size / (n * dims), "compress_images_per_s": n / tc,
            "decompress_images_per_s": n / td}


def discrete_quantization(run, x) -> dict:
    """A discrete z's chain: its coded bits (less the initial bits) against the information content of what
    it coded, -log2 p(x|z) - log2 p(z) + log2 q(z|x) at the z's it popped (float64, from the model's exact
    probabilities), in bits: what quantizing the probabilities to the coder's 24 bits cost."""
    popped = []
    originals = {m: getattr(ans.Stack, m) for m in ("pop_categorical", "pop_bernoulli")}

    def recorder(original):
        def record(self, probs):
            out = original(self, probs)
            popped.append(out)          # encoding pops only z, block by block
            return out
        return record

    try:
        for method, original in originals.items():
            setattr(ans.Stack, method, recorder(original))
        _, stats = compression.compress_with_stats(run, x)
    finally:
        for method, original in originals.items():
            setattr(ans.Stack, method, original)
    plan = coders.plan_for(run.model, run.variables, tuple(run.event_shape), coders.make_coder("discrete_bits_back"))
    symbols = np.concatenate(popped).reshape(x.shape[0], -1)
    z = jnp.asarray(plan.latents.decoder_input(symbols, x.shape[0]))
    xs = jnp.asarray(x)
    log_joint = np.asarray(run.model.apply(run.variables, xs, z, method="log_joint"), np.float64)
    log_q = np.asarray(run.model.apply(run.variables, xs, method=lambda m, xs: m.q_z_given_x(xs).log_prob(z)), np.float64)
    information = float(np.sum(log_q - log_joint) / math.log(2))
    coded = stats["bits_after"][-1] - ans.Stack(ans.seed_words(stats["layout"].seed_words)).bits()
    return {"coded_bits": coded, "information_bits": information, "quantization_bits": coded - information,
            "quantization_percent": 100 * (coded - information) / information, "blocks": len(stats["layout"].blocks)}


KINDS = {  # short name: the row's label
    "vae": "VAE (bits_back)",
    "two_layer": "VAE, two stochastic layers (bits_back)",
    "ae_n01": "AE + N(0, I) attached (quantized_latent)",
    "ae_gmm": "AE + ex-post GMM (quantized_latent)",
    "ae_flow": "AE + ex-post flow (quantized_latent)",
    "ae_two_stage": "AE + ex-post second-stage VAE (quantized_latent, bits back inside)",
    "wae": "WAE, N(0, I) (quantized_latent)",
    "vq": "VQ-VAE + code prior (discrete_codes)",
    "made": "MADE (autoregressive)",
    "dvae": "discrete VAE, 2 categorical variables of 3 (discrete_bits_back)",
    "dvae_bernoulli": "discrete VAE, 8 Bernoulli bits (discrete_bits_back)",
    "dvae_16x4": "discrete VAE, 16 categorical variables of 4 (discrete_bits_back)",
}


def kinds(root: str, repeats: int, only: list[str] | None = None) -> dict:
    """Every kind of model (or those named in ``only``), trained tiny on the 8x8 digits, coding the test split."""
    def train(name, preset, overrides=()):
        workdir = os.path.join(root, name)
        if not os.path.isdir(workdir):
            vaegen.train_and_evaluate(loading.load_config(preset, list(overrides) + ["train.num_epochs=20"]), workdir)
        return vaegen.load(workdir)

    fit = dict(epochs=20, batch_size=100, max_codes=1300)

    def made_generative(run, name, **settings):
        """``run`` with the recipe ``name`` fitted to its codes and attached (vaegen expost's work)."""
        r = recipe(name, **settings)
        return r.attach(run, r.fit(run))

    bernoulli = ["inference.posterior=bernoulli", "model.prior=bernoulli"]
    make = {
        "vae": lambda: train("vae", "tiny"),
        "two_layer": lambda: train("two_layer", "tiny", ["model.kind=two_layer", "model.kind.top_latent_dim=2"]),
        "ae_n01": lambda: made_generative(train("ae", "tiny:ae"), "standard_normal"),
        "ae_gmm": lambda: made_generative(train("ae", "tiny:ae"), "gmm", components=10, max_codes=1300),
        "ae_flow": lambda: made_generative(train("ae", "tiny:ae"), "flow", **fit),
        "ae_two_stage": lambda: made_generative(train("ae", "tiny:ae"), "two_stage", **fit),
        "wae": lambda: train("wae", "tiny:wae"),
        "vq": lambda: made_generative(train("vq", "tiny:vq"), "code_prior", **fit,
                                      density=code_prior_model.CategoricalMADESettings(hidden=(64,))),
        "made": lambda: train("made", "tiny", ["model.kind=autoregressive", "objective=exact", "model.kind.hidden=(64,)"]),
        "dvae": lambda: train("dvae", "tiny:dvae"),
        "dvae_bernoulli": lambda: train("dvae_bernoulli", "tiny:dvae", bernoulli + ["model.latent_dim=8"]),
        "dvae_16x4": lambda: train("dvae_16x4", "tiny:dvae", ["model.latent_dim=64", "inference.posterior.categories=4",
                                                              "model.prior.categories=4"]),
    }
    unknown = sorted(set(only or ()) - set(KINDS))
    if unknown:
        raise SystemExit(f"--only: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    out = {}
    for key, name in KINDS.items():
        if only and key not in only:
            continue
        run = make[key]()
        x = run.split("test")
        r = model_row(run, x, repeats=repeats, samples=None)
        out[name] = {"coded_bits_per_dim_file": r["file_bits_per_dim"], "coded_bits_per_dim_net": r["net_bits_per_dim"],
                     "bound_bits_per_dim": r["bound"]["bits_per_dim"], "bound_stderr": r["bound"]["stderr_bits_per_dim"],
                     "bound": r["bound"]["meaning"], "net_gap_bits_per_dim": r["net_gap_bits_per_dim"],
                     "initial_bits": r["initial_bits"], "header_bytes": r["header_bytes"], "num_images": r["num_images"],
                     "speed": r["speed"]}
        if r["coder"]["name"] == "discrete_bits_back":
            out[name]["quantization"] = discrete_quantization(run, x)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", help="a trained run (e.g. the demo VAE: vae_mlp_fmnist)")
    p.add_argument("--max-examples", type=int, default=0, help="the first n test images (0 = all)")
    p.add_argument("--repeats", type=int, default=2, help="warm passes timed (the best is reported)")
    p.add_argument("--samples", type=int, default=None, help="samples of the bound (z per image for the -ELBO)")
    p.add_argument("--kinds", action="store_true", help="every kind of model, tiny runs on the 8x8 digits")
    p.add_argument("--only", default="", help=f"with --kinds: these kinds only (comma-separated: {', '.join(KINDS)})")
    args = p.parse_args()
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()}}
    if args.workdir:
        run = vaegen.load(args.workdir)
        x = run.split("test", max_examples=args.max_examples)
        result["images"] = {"workdir": args.workdir, "dataset": run.spec.data.name, "num": int(x.shape[0]),
                            "shape": list(x.shape[1:]), "binarization": run.spec.data.binarization}
        result["model"] = model_row(run, x, repeats=args.repeats, samples=args.samples)
        if result["model"]["coder"]["name"] == "discrete_bits_back":
            result["model"]["quantization"] = discrete_quantization(run, x)
        result["everyday"] = everyday(x)
    if args.kinds:
        with tempfile.TemporaryDirectory(prefix="vaegen-bench-compress-") as root:
            result["kinds"] = kinds(root, args.repeats, [k for k in args.only.split(",") if k])
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
