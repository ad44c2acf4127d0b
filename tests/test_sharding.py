"""Scale-out on fake CPU devices: a real two-process ("two-host") run through jax.distributed,
four CPU devices per process, eight in all.  The rows are sharded across both processes, the
global batch is gathered exactly, the validation evaluator gives the per-example numbers of one
device, and training follows the one-device trajectory."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import vaegen
from vaegen.config import loading as config_lib
from vaegen.config import schema
from vaegen import sharding as sharding_lib
from vaegen.train import trainer as train_lib
from conftest import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent("""
    import json, sys
    from vaegen import sharding
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    assert sharding.initialize_distributed(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    import vaegen
    from vaegen.config import loading as config
    from vaegen.config import schema
    from vaegen.data import splits as data_splits
    from vaegen.objectives import bounds as objectives
    from vaegen.train import steps
    from vaegen.train import trainer as train
    from vaegen.model import latent
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    mesh = sharding.data_mesh()
    out = {}

    # Rows sharded over both processes (203 rows padded to 208), gathered into a global batch.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(203, 3, 2, 1), dtype=np.uint8)
    rows = sharding.shard_rows(x, mesh)
    idx = jnp.asarray(rng.permutation(203)[:64])
    batch = jax.jit(lambda r, i: sharding.gather_rows(r, i, mesh))(rows, idx)
    out["rows"] = [list(rows.shape), sorted({s.data.shape[0] for s in rows.addressable_shards})]
    out["gather_exact"] = bool(np.array_equal(multihost_utils.process_allgather(batch, tiled=True),
                                              x[np.asarray(idx)]))

    # The validation evaluator on eight devices vs one local device, example by example.
    spec = schema.to_spec(config.load_config("tiny", ["train.num_epochs=2", "train.batch_size=64"]))
    splits = train.load_data(spec)
    setup = train.build_setup(spec, splits.train.shape[1:], splits.train.shape[0])
    params = latent.init_params(setup.model, jax.random.key(1), splits.train.shape[1:])
    stored = np.asarray(data_splits.stored_split(spec.data, splits.validation[:197], "validation"))
    objective, key = objectives.IWAE(objectives.IWAESettings(num_samples=5)), jax.random.key(7)
    local = sharding.data_mesh(jax.local_devices()[:1])
    one = steps.make_validation(setup.model, objective, protocol="static", batch_size=50, mesh=local)(
        jax.device_put(params, sharding.replicated(local)), sharding.shard_rows(stored, local), key)
    one = np.asarray(one["iwae"])[:197]
    rep = jax.device_put(params, sharding.replicated(mesh))
    many = steps.make_validation(setup.model, objective, protocol="static", batch_size=7, mesh=mesh)(
        rep, sharding.shard_rows(stored, mesh), key)
    many = np.asarray(many["iwae"].addressable_data(0))
    out["eval"] = [int(many.shape[0]), float(np.max(np.abs(one - many[:197])))]

    train.train_and_evaluate(spec, workdir)
    if pid == 0:
        print("RESULT " + json.dumps(out))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_four_devices_shard_rows_evaluate_and_train_as_one_device(tmp_path):
    port, hosts = _free_port(), tmp_path / "two_hosts"
    env = dict(os.environ, XLA_FLAGS=xla_flags(xla_force_host_platform_device_count=4), JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), str(port), str(hosts)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
    out = json.loads(next(l for l in logs[0].splitlines() if l.startswith("RESULT "))[len("RESULT "):])

    assert out["rows"] == [[208, 3, 2, 1], [26]]  # 26 rows on each of the 4 local devices
    assert out["gather_exact"]
    assert out["eval"][0] == 200 and out["eval"][1] < 1e-4  # same numbers, sharded or not

    one = tmp_path / "one_device"
    cfg = config_lib.load_config("tiny", ["train.num_epochs=2", "train.batch_size=64"])
    train_lib.train_and_evaluate(schema.to_spec(cfg), one, devices=jax.devices()[:1])

    def read(w):
        return [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]

    info = json.loads((hosts / "run.json").read_text())
    assert info["processes"] == 2 and len(info["devices"]) == 8
    a, b = read(one), read(hosts)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [20, 40]  # one writer: process 0
    for ra, rb in zip(a, b):
        for k in ("train/elbo", "train/grad_norm", "validation/elbo"):
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-4, atol=2e-4)
    # A checkpoint written by two processes on eight devices loads on one.
    pa, pb = vaegen.load(one).variables, vaegen.load(hosts).variables
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)))
    assert diff < 1e-3


def test_cluster_detection_needs_more_than_one_process(monkeypatch):
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert not sharding_lib.cluster_detected({})
    assert not sharding_lib.cluster_detected({"SLURM_NTASKS": "1"})
    assert sharding_lib.cluster_detected({"SLURM_NTASKS": "4"})
    assert sharding_lib.cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})
    assert sharding_lib.cluster_detected({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"})
    assert not sharding_lib.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert sharding_lib.cluster_detected({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    assert not sharding_lib.initialize_distributed()  # one process here: nothing to start
