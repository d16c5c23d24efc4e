"""Developer sessions. Uses nox's virtualenv backend (not uv): uv ignores the
local torch wheel and would download a multi-GB CUDA build.

    nox -s tests      # the test suite (what CI runs)
    nox -s lint       # ruff + mypy
    nox -s wheel      # build the wheel and smoke-test it from a temporary folder
    nox -s benchmarks # pytest-benchmark: harness cost and agreement (timing; not in CI)
    nox -s example_report  # regenerate reports/esnet-vs-shufflev2 (the README's example)
    nox -s latency_gates   # forward latency of the default variants, gated against the last saved run
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
    session.install("-e", ".[test,onnx]")
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
    session.run("archbench", "run", "--variants", "esnet,shufflev2", "--out", "reports/esnet-vs-shufflev2")


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
