"""Developer sessions. Uses nox's virtualenv backend (not uv): uv ignores the
local torch wheel and would download a multi-GB CUDA build.

    nox -s tests      # the test suite (what CI runs)
    nox -s lint       # ruff + mypy
    nox -s wheel      # build the wheel and smoke-test it from a temporary folder
    nox -s benchmarks # pytest-benchmark: harness cost and agreement (timing; not in CI)
    nox -s example_report  # regenerate reports/esnet-vs-shufflev2 (the README's example)
    nox -s latency_gates   # forward latency of the default variants, gated against the last saved run
    nox -s cuda       # on a machine with a GPU: the CUDA tests and a short GPU run (not in CI)
"""

from __future__ import annotations

import glob

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests", "lint"]

TORCH = "torch==2.13.0"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test,onnx,openvino,ncnn,ray]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "archbench", "tests", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11", default=False)
def wheel(session: nox.Session) -> None:
    session.install(TORCH, "build")
    tmp = session.create_tmp()
    session.run("python", "-m", "build", "--wheel", "--outdir", tmp)
    session.install(*glob.glob(f"{tmp}/archbench-*.whl"))
    session.chdir(tmp)
    session.run("archbench", "list", "picodet*")
    session.run("python", "-c", "import archbench; archbench.create_model('picodet_s')")


@nox.session(python="3.11", default=False)
def benchmarks(session: nox.Session) -> None:
    """Timing benchmarks, saved under .benchmarks/ and compared with the last saved run."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "tests/benchmarks", "--benchmarks", "--benchmark-autosave",
        "--benchmark-group-by=group", *session.posargs,
    )


@nox.session(python="3.11", default=False)
def example_report(session: nox.Session) -> None:
    """Regenerate the committed example report with the README's main command."""
    session.install(TORCH)
    session.install("-e", ".")
    session.run("archbench", "run", "--variants", "esnet,shufflev2", "--out", "reports/esnet-vs-shufflev2",
                "--overwrite")


GATES = ".benchmarks/latency-gates"


@nox.session(python="3.11", default=False)
def latency_gates(session: nox.Session) -> None:
    """Forward latency of the default variants at 320/416/640, gated against the last saved run.

    Run-to-run noise on a busy 2-core machine was typically 4% and up to 16%, so the
    gate is 20%; run it on a quiet machine. Never part of CI.
    """
    session.install(TORCH)
    session.install("-e", ".[test]")
    # --benchmark-compare-fail is a usage error while nothing is saved: the first run only saves.
    compare = ["--benchmark-compare", "--benchmark-compare-fail=median:20%"] if glob.glob(f"{GATES}/*/*.json") else []
    session.run(
        "python", "-m", "pytest", "tests/benchmarks/test_latency_gates.py", "--benchmarks",
        f"--benchmark-storage={GATES}", "--benchmark-autosave", "--benchmark-group-by=group",
        *compare, *session.posargs,
    )


@nox.session(python="3.11", default=False)
def cuda(session: nox.Session) -> None:
    """Everything CUDA in one command, for a machine with a GPU: the tests marked ``cuda``
    (forms, precision policy, allocator peaks, ceilings and per-layer device time, cuda:1 where
    there are two GPUs) and a short
    ``archbench run --device cuda`` over the GPU forms. On Linux, PyPI's torch wheel is the
    CUDA build; onnxruntime-gpu brings the CUDA execution provider."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.install("onnx>=1.23", "onnxruntime-gpu>=1.20", "onnxscript>=0.7")
    session.run("python", "-c", "import torch; assert torch.cuda.is_available(), 'no CUDA device'; "
                "print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))")
    session.run("python", "-m", "pytest", "-q", "-m", "cuda", "-rs", *session.posargs)
    out = session.create_tmp()
    session.run("archbench", "run", "--variants", "picodet_s,picodet_shufflenetv2", "--resolutions", "320,640",
                "--device", "cuda", "--forms", "eager,fused,channels_last,fp16,bf16,onnxruntime",
                "--metrics", "params,macs,memory,latency,layers",
                "--out", f"{out}/cuda-run", "--overwrite", success_codes=[0, 3])
    session.run("archbench", "run", "--variants", "picodet_s", "--resolutions", "320", "--device", "cuda",
                "--tf32", "--forms", "eager,fused", "--out", f"{out}/cuda-tf32", "--overwrite", success_codes=[0, 3])
