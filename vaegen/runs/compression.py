"""A trained run as a lossless compressor: ``vaegen.compress(run, x) -> bytes`` and
``vaegen.decompress(run, data) -> x``.

``x`` is a batch of images as the model sees them (float32 ``[N, *event]``: binary for a Bernoulli
likelihood, k / 255 for the discretized logistic); ``decompress`` returns them bit for bit.  The
coder is the model's (:func:`vaegen.coding.coders.default_coder`: bits back for a VAE, its z continuous
or discrete, the quantized code for an autoencoder with a density over its codes, the codes for a VQ-VAE with its code prior, the
pixels for MADE) unless one is named.  A run with an ex-post density attached
(``vaegen.load(workdir, density=NAME)``) codes with that p(z).

The file (format version 1; integers little-endian)::

    magic      8 bytes   89 56 47 5A 0D 0A 1A 0A  ("\\x89VGZ\\r\\n\\x1a\\n", as PNG's: a file mangled as
                         text is recognised as such)
    header     u32 length, then that many bytes of UTF-8 JSON: the format version; the model's
               fingerprint (the run's config fingerprint and a SHA-256 of every parameter array,
               the attached density's included) so a file is never decoded by another model; the
               number, shape and support of the images and where they came from (binarization
               included); the coder and its settings; the blocks and initial words of the chain;
               the versions of constriction and JAX and the platform that coded it
    payload    u64 number of words, then the ANS stack's 32-bit words
    checksum   32 bytes: SHA-256 of everything before it

ANS decodes any words to *some* images, so a damaged byte would go unnoticed without the checksum;
with it every damaged or truncated file is refused with one line
(:class:`vaegen.errors.CompressedFileError`), as is a file of another model.

Decoding recomputes the networks' outputs and needs them bit for bit as they were when coding:
decode with the same platform, JAX version and XLA flags (another one may round a float otherwise,
and the decoder would then not end where the coder began -- which is detected and reported).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import struct
import time
from typing import Any

import jax
import numpy as np

from vaegen.coding import ans
from vaegen.coding import coders as coding
from vaegen import files as files_lib
from vaegen.errors import CodingError, CompressedFileError, ImagesError
from vaegen.registry import to_mapping
from vaegen.runs.run import Run
from vaegen.train import workdir as workdir_lib

MAGIC = b"\x89VGZ\r\n\x1a\n"
FORMAT_VERSION = 1
CHECKSUM_BYTES = 32


# --- the model's fingerprint ------------------------------------------------------------------------

def parameters_fingerprint(variables: Any) -> str:
    """SHA-256 (16 hex digits) of every array of ``variables``: its path, dtype, shape and bytes."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def fingerprint(run: Run) -> dict[str, str]:
    """The run's config fingerprint and its parameters' (:func:`parameters_fingerprint`)."""
    return {"config": workdir_lib.config_fingerprint(to_mapping(run.spec)),
            "parameters": parameters_fingerprint(run.variables)}


def _prior_name(run: Run) -> str:
    prior = getattr(run.model, "prior", None)
    return "none" if prior is None else type(prior).__name__


def _environment() -> dict[str, str]:
    device = jax.devices()[0]
    return {"constriction": ans.version(), "jax": jax.__version__,
            "platform": f"{device.platform} {getattr(device, 'device_kind', '')} {platform.machine()}".strip()}


# --- the file ---------------------------------------------------------------------------------------

def _check_images(run: Run, x: Any) -> np.ndarray:
    x = np.asarray(x)
    shape = tuple(run.event_shape)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ImagesError(f"the images to compress have shape {x.shape}; this run's model takes [N, "
                          f"{', '.join(map(str, shape))}]")
    if x.shape[0] == 0:
        raise ImagesError("no images to compress (N = 0)")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise ImagesError(f"the images to compress must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ImagesError("the images to compress contain NaN or infinite values")
    return x


def compress_with_stats(run: Run, x: Any, *, coder: str | None = None, settings: Any = None,
                        images: dict | None = None, model: dict | None = None) -> tuple[bytes, dict]:
    """:func:`compress`, and what coding measured: the layout, ``bits_after`` each block, the
    ``popped`` bits of each block, ``seconds``, ``initial_bits``."""
    x = _check_images(run, x)
    if run.recipe is not None:            # a recipe that declares it cannot code (the DAE's chain: no tractable p(x))
        why = run.recipe.build().trait("cannot_code")
        if why:
            raise CodingError(f"--density {run.recipe.name} cannot code images losslessly: {why}")
        model = {"recipe": run.recipe.to_mapping(), **(model or {})}
    coded = coding.compress(run.model, run.variables, x, coder=coder, settings=settings,
                            event_shape=tuple(run.event_shape))
    layout = coded.layout
    header = {
        "format": FORMAT_VERSION,
        "model": {"fingerprint": fingerprint(run), "workdir": str(run.workdir), "kind": run.spec.model.kind.name,
                  "prior": _prior_name(run), **(model or {})},
        "images": {"num": layout.num_images, "event_shape": list(layout.event_shape),
                   "support": run.spec.model.likelihood.trait("support"), **(images or {})},
        "coder": {"name": layout.coder, "settings": layout.settings},
        "chain": {"blocks": list(layout.blocks), "seed_words": layout.seed_words},
        "coded_with": _environment(),
    }
    data = _pack(header, coded.words)
    return data, {"layout": layout, **coded.stats, "header_bytes": len(data) - 4 * coded.words.size}


def compress(run: Run, x: Any, *, coder: str | None = None, settings: Any = None, images: dict | None = None,
             model: dict | None = None) -> bytes:
    """Codes the images ``x [N, *event]`` (as the model sees them) with ``run``'s model into one file.

    Args:
      coder: a registered coder (``vaegen config --components coder``); None: the model's own.
      settings: the coder's settings (a mapping or its settings object; None: the defaults).
      images: where the images came from (recorded in the header, e.g. their binarization).
      model: more about the model (recorded in the header, e.g. the ex-post density's name).
    Raises:
      vaegen.errors.NoPriorError: an autoencoder without p(z): nothing to code z with.
      vaegen.errors.CodingError: a model that cannot code (a Gaussian likelihood, a diffusion prior,
        a coder that does not fit it).
      vaegen.errors.SupportError, ImagesError: images the likelihood cannot code (grey levels for a
        Bernoulli likelihood), or of the wrong shape.
    """
    return compress_with_stats(run, x, coder=coder, settings=settings, images=images, model=model)[0]


def _pack(header: dict, words: np.ndarray) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = (MAGIC + struct.pack("<I", len(head)) + head + struct.pack("<Q", int(words.size))
            + np.ascontiguousarray(words, "<u4").tobytes())
    return body + hashlib.sha256(body).digest()


def read(data: bytes) -> tuple[dict, np.ndarray]:
    """``(header, words)`` of a compressed file, checked: its magic, format version, lengths and
    checksum (:class:`vaegen.errors.CompressedFileError`, one line, otherwise)."""
    data = bytes(data)
    if not data.startswith(MAGIC):
        what = "empty" if not data else "not a vaegen compressed file (its first bytes are not vaegen's)"
        raise CompressedFileError(f"the data are {what}")
    fixed = len(MAGIC) + 4
    if len(data) < fixed:
        raise CompressedFileError(f"the compressed file is truncated: {len(data)} bytes, not even a header")
    (head_len,) = struct.unpack_from("<I", data, len(MAGIC))
    need = fixed + head_len + 8
    if len(data) < need + CHECKSUM_BYTES:
        raise CompressedFileError(f"the compressed file is truncated: {len(data)} bytes, its header alone "
                                  f"needs {need + CHECKSUM_BYTES}")
    (num_words,) = struct.unpack_from("<Q", data, fixed + head_len)
    total = need + 4 * num_words + CHECKSUM_BYTES
    if len(data) != total:
        how = "truncated" if len(data) < total else "longer than it says"
        raise CompressedFileError(f"the compressed file is {how}: {len(data)} bytes where its header says {total}")
    if hashlib.sha256(data[:-CHECKSUM_BYTES]).digest() != data[-CHECKSUM_BYTES:]:
        raise CompressedFileError("the compressed file is damaged: its SHA-256 checksum does not match its content")
    try:
        header = json.loads(data[fixed:fixed + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompressedFileError(f"the compressed file's header is not JSON: {e}") from None
    if header.get("format") != FORMAT_VERSION:
        raise CompressedFileError(f"the compressed file has format version {header.get('format')}; this vaegen reads "
                                  f"version {FORMAT_VERSION}")
    words = np.frombuffer(data, "<u4", count=num_words, offset=need).astype(np.uint32)
    return header, words


def read_header(data: bytes) -> dict:
    """The checked header of a compressed file (see :func:`read`)."""
    return read(data)[0]


def _describe_model(model: dict) -> str:
    density = f", density {model['density']}" if model.get("density") else ""
    return f"run {model.get('workdir')} ({model.get('kind')}, p(z) {model.get('prior')}{density})"


def _describe_fingerprint(fp: Any) -> str:
    if not isinstance(fp, dict):
        return repr(fp)
    return f"config {fp.get('config')}, parameters {fp.get('parameters')}"


def check_model(run: Run, header: dict) -> None:
    """Refuses (:class:`vaegen.errors.CompressedFileError`) a file written by another model than ``run``'s."""
    written = header.get("model", {})
    mine = fingerprint(run)
    if written.get("fingerprint") != mine:
        raise CompressedFileError(
            f"the file was written by another model -- {_describe_model(written)}, fingerprint "
            f"{_describe_fingerprint(written.get('fingerprint'))} -- not by this one ({run.workdir}, p(z) "
            f"{_prior_name(run)}, fingerprint {_describe_fingerprint(mine)}): "
            "decompress it with the run (and --density) that wrote it")
    used = header.get("coded_with", {}).get("constriction", "")
    if used.split(".")[:2] != ans.version().split(".")[:2]:
        raise CompressedFileError(f"the file was coded with constriction {used}, whose entropy models constriction "
                                  f"{ans.version()} may quantize differently: install constriction=={used} to decode it")


def _layout(header: dict) -> coding.Layout:
    images, coder, chain = header["images"], header["coder"], header["chain"]
    return coding.Layout(coder["name"], dict(coder["settings"]), int(images["num"]),
                         tuple(int(s) for s in images["event_shape"]), tuple(int(b) for b in chain["blocks"]),
                         int(chain["seed_words"]))


def decompress(run: Run, data: bytes) -> np.ndarray:
    """The images coded in ``data`` by :func:`compress` with this run's model: float32 ``[N, *event]``,
    bit for bit as they were given.

    Raises:
      vaegen.errors.CompressedFileError: not a compressed file, damaged, truncated, of another format
        version, written by another model, or coded on a platform whose networks round differently.
    """
    header, words = read(data)
    check_model(run, header)
    try:
        return coding.decompress(run.model, run.variables, words, _layout(header))
    except CompressedFileError as e:
        env, here = header.get("coded_with", {}), _environment()
        differs = [f"{k} {env.get(k)} there, {here[k]} here" for k in ("jax", "platform") if env.get(k) != here[k]]
        raise CompressedFileError(f"{e}" + (f" ({'; '.join(differs)})" if differs else "")) from None


# --- measured against the model's bound ---------------------------------------------------------------

def sizes(data: bytes) -> dict:
    """What a file of ``n`` images of ``dims`` dimensions each costs (from its header), in bits per dimension:
    ``file_bits_per_dim`` (all of it, header and checksum included) and ``net_bits_per_dim`` (the ANS words
    less the initial bits, paid once by the first image: what the chain costs per image)."""
    header, words = read(data)
    n = int(header["images"]["num"])
    dims = int(math.prod(header["images"]["event_shape"]))
    initial = 32 * int(header["chain"]["seed_words"])
    return {"num_images": n, "dims_per_image": dims, "file_bytes": len(data), "initial_bits": initial,
            "file_bits_per_dim": 8 * len(data) / (n * dims),
            "net_bits_per_dim": (32 * int(words.size) - initial) / (n * dims), "coder": header["coder"]["name"]}


def report(run: Run, x: Any, data: bytes, *, seed: int = 0, samples: int | None = None,
           stats: dict | None = None, seconds: float | None = None) -> dict:
    """What a file costs against the model's bound on the same images ``x`` (JSON-able).

    ``file_bits_per_dim`` is the whole file (header and checksum included) in bits per dimension of
    the images; ``net_bits_per_dim`` the ANS words less the initial bits (paid once, by the first
    image: ``initial_bits``), what the chain costs per image; ``bound`` the coder's reference on the
    same images (the -ELBO for bits back, the exact -log p(x) of MADE, ...; its ``meaning`` says which)
    in bits per dimension with its standard error over the images; the ``gap`` of each.  With
    ``stats`` (from :func:`compress_with_stats`): ``first_image`` (its net bits and the initial bits)
    and the blocks."""
    header, words = read(data)
    x = np.asarray(x)
    n, dims = int(x.shape[0]), int(math.prod(x.shape[1:]))
    c = coding.make_coder(header["coder"]["name"], header["coder"]["settings"])
    t0 = time.perf_counter()
    nats, meaning = c.reference(run.model, run.variables, x, jax.random.key(seed), samples)
    bound_seconds = time.perf_counter() - t0
    per_dim = 1.0 / (dims * math.log(2))
    bound = float(np.mean(nats)) * per_dim
    initial = 32 * int(header["chain"]["seed_words"])
    payload = 32 * int(words.size)
    file_bpd = 8 * len(data) / (n * dims)
    net_bpd = (payload - initial) / (n * dims)
    out = {
        "coder": header["coder"], "num_images": n, "dims_per_image": dims,
        "file_bytes": len(data), "header_bytes": len(data) - 4 * int(words.size), "payload_words": int(words.size),
        "file_bits_per_dim": file_bpd, "payload_bits_per_dim": payload / (n * dims), "net_bits_per_dim": net_bpd,
        "initial_bits": initial,
        "bound": {"bits_per_dim": bound, "nats_per_image": float(np.mean(nats)),
                  "stderr_bits_per_dim": float(np.std(nats, ddof=1) / math.sqrt(n)) * per_dim if n > 1 else None,
                  "meaning": meaning, "seconds": bound_seconds},
        "gap_bits_per_dim": file_bpd - bound, "net_gap_bits_per_dim": net_bpd - bound,
        "gap_percent": 100.0 * (file_bpd / bound - 1.0) if bound > 0 else None,
        "blocks": len(header["chain"]["blocks"]), "images": header["images"], "model": header["model"],
        "coded_with": header["coded_with"],
    }
    if seconds is not None:
        out["seconds"] = seconds
        out["images_per_second"] = n / seconds if seconds > 0 else None
    if stats:
        after = stats["bits_after"]
        out["first_image"] = {"initial_bits": initial, "net_bits": after[0] - initial if stats["layout"].blocks[0] == 1
                              else None, "popped_bits": stats["popped"][0] if stats["layout"].blocks[0] == 1 else None,
                              "note": "the initial bits are on the stack before the first image and stay in the file: "
                                      "the first image's overhead, paid once for the set"}
    return out


def format_report(result: dict) -> str:
    """A few lines for the terminal."""
    b = result["bound"]
    lines = [f"coder {result['coder']['name']}: {result['num_images']} images, {result['file_bytes']} bytes "
             f"({result['header_bytes']} of header and checksum)",
             f"  file        {result['file_bits_per_dim']:.4f} bits/dim",
             f"  net         {result['net_bits_per_dim']:.4f} bits/dim "
             + (f"(without the {result['initial_bits']} initial bits, paid once by the first image)"
                if result["initial_bits"] else "(the coded words alone; no initial bits: nothing is popped)"),
             f"  bound       {b['bits_per_dim']:.4f} bits/dim"
             + (f" +- {b['stderr_bits_per_dim']:.4f}" if b.get("stderr_bits_per_dim") is not None else "")
             + f"  ({b['meaning']})",
             f"  gap         {result['gap_bits_per_dim']:+.4f} bits/dim (file), {result['net_gap_bits_per_dim']:+.4f} (net)"
             + (f", {result['gap_percent']:+.2f}% of the bound" if result.get("gap_percent") is not None else "")]
    if result.get("images_per_second"):
        lines.append(f"  speed       {result['images_per_second']:.0f} images/s ({result['seconds']:.2f} s)")
    return "\n".join(lines)


# --- files --------------------------------------------------------------------------------------------

def write_file(path: Any, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (:func:`vaegen.files.write_atomic`): a failed write leaves a
    previous file as it was."""
    files_lib.write_atomic(path, data, kind="data")


def save_images(path: Any, x: np.ndarray) -> None:
    """Saves images ``x`` to the ``.npy`` file ``path`` atomically."""
    files_lib.write_atomic(path, lambda f: np.save(f, np.asarray(x), allow_pickle=False), kind="data")
