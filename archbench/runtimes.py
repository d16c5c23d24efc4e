"""The runtimes lightweight detectors ship on: OpenVINO and ncnn as deployment forms (CPU).

Each form is one ``register_form`` call and its maker, like every form in ``archbench.forms``
(which imports this module, so ``FORMS`` always lists them); each is checked against eager
there before it is timed.

* ``openvino`` (``pip install 'archbench[openvino]'``): the model exported to ONNX by
  ``forms._onnx_bytes`` (the same export the ``onnxruntime`` form uses), read by
  ``openvino.Core`` and compiled for the ``CPU`` plugin with ``INFERENCE_NUM_THREADS`` = the
  run's threads, ``INFERENCE_PRECISION_HINT`` f32 (set explicitly: on a CPU with bf16
  support the plugin's default is bf16), ``PERFORMANCE_HINT`` LATENCY and ``NUM_STREAMS`` 1;
  one infer request, called synchronously. ONNX rather than ``openvino.convert_model``:
  compiling the ONNX file took 0.3 s where converting from torch took 4.5-6.5 s, and the
  compiled model ran 4-7% faster (PicoDet-S, 1 thread, this project's measurements).
  The precision the compiled model reports is read back and must be the one asked for.
* ``openvino_bf16``: the same with the bf16 precision hint, only where the CPU plugin
  lists ``BF16`` among its ``OPTIMIZATION_CAPABILITIES``.
* ``ncnn`` (``pip install 'archbench[ncnn]'``: ncnn and pnnx): ``torch.jit.trace`` of the
  model, converted by the ``pnnx`` executable with ``fp16=0`` (fp32 weights; pnnx's default
  stores fp16 weights) in a conversion folder (pnnx writes its files beside the ``.pt`` and
  into its working directory, so it runs with that folder as its working directory; its exit
  status is checked), then an ``ncnn.Net`` with ``num_threads`` = the run's threads, fp16
  storage/packed/arithmetic and bf16 storage/packed off, every option set before
  ``load_param``. Input and output blob names are read from the loaded model; one extractor
  per inference (an extractor caches the blobs it computed); batch size 1 only (ncnn's
  blobs have no batch dimension).
* ``ncnn_fp16``: pnnx's fp16 weights and ncnn's own fp16 options (storage, packed,
  arithmetic) on, as ncnn deploys by default.

Tolerances: fp32 forms use the shared rule (``forms.FP32_TOLERANCE`` or 10 x eager
float32's own error). The reduced-precision forms use the torch half-precision forms'
tolerances (bf16 keeps 8 significant bits: 5e-2; fp16 11 bits: 1e-2) and are also accepted
at up to 10 x torch eager's own error in that dtype (``Form.low_precision``): a network that
amplifies rounding (a randomly initialised, BN-calibrated PicoDet-S: torch bf16 0.89, fp16
0.24 relative error vs float64 at 192 px) is as far from float64 in any bf16 or fp16 runtime.

Conversion files go to a temporary folder that is removed, or are kept where
``forms.keep_artifacts`` / ``prepare_form(artifacts_dir=...)`` says.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archbench.environment import package_version
from archbench.forms import (
    Form,
    FormError,
    Made,
    Maker,
    _installed,
    _onnx_bytes,
    conversion_folder,
    register_form,
)

OPENVINO_INSTALL_HINT = "openvino is not installed (pip install 'archbench[openvino]')"
NCNN_INSTALL_HINT = "ncnn and pnnx are not installed (pip install 'archbench[ncnn]')"
BF16_TOLERANCE = 5e-2  # 8 significant bits, through a deep network (as the torch bf16 form)
FP16_TOLERANCE = 1e-2  # 11 significant bits (as the torch fp16 form)
PNNX_TIMEOUT_S = 600.0


def _cpu_only(runtime: str) -> Callable[[torch.device], str | None]:
    def why(device: torch.device) -> str | None:
        return None if device.type == "cpu" else f"{runtime} runs on the CPU here (device {device})"

    return why


# -- OpenVINO ---------------------------------------------------------------------
@cache
def openvino_cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (e.g. FP32, BF16, FP16, INT8)."""
    import openvino as ov

    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _openvino_unavailable(precision: str) -> Callable[[torch.device], str | None]:
    def why(device: torch.device) -> str | None:
        if not _installed("openvino"):
            return OPENVINO_INSTALL_HINT
        if (reason := _cpu_only("openvino")(device)) is not None:
            return reason
        if precision == "bf16" and "BF16" not in openvino_cpu_capabilities():
            return ("this CPU has no bf16 support in OpenVINO's CPU plugin "
                    f"(OPTIMIZATION_CAPABILITIES: {', '.join(openvino_cpu_capabilities())})")
        return None

    return why


def openvino_config(threads: int, precision: str) -> dict[str, Any]:
    """The CPU plugin's compile properties: ``precision`` is "f32" or "bf16"."""
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def _make_openvino(precision: str) -> Maker:
    """ONNX -> ``openvino.Core.read_model`` -> ``compile_model`` for the CPU plugin at ``precision``."""
    def make(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
        import numpy as np
        import openvino as ov

        data, exporter = _onnx_bytes(model, x)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(data), "CPU", openvino_config(threads, precision))
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        got_name = got.get_type_name() if hasattr(got, "get_type_name") else str(got)
        if got_name != precision:
            raise FormError(f"openvino compiled at {got_name} where {precision} was asked for")
        request = compiled.create_infer_request()
        feed = {0: np.ascontiguousarray(x.detach().cpu().numpy())}
        version = package_version("openvino")
        note = (f"{exporter}; openvino {version} CPU plugin: INFERENCE_PRECISION_HINT {got_name} (read back), "
                f"{compiled.get_property('INFERENCE_NUM_THREADS')} thread(s), PERFORMANCE_HINT LATENCY, "
                f"{compiled.get_property('NUM_STREAMS')} stream(s); one infer request, synchronous")

        def outputs(result: Any) -> list[torch.Tensor]:
            return [torch.from_numpy(np.array(value)) for value in result.to_tuple()]

        return Made(lambda: request.infer(feed, share_inputs=True), note, outputs,
                    runtime=f"openvino {version}", precision={"f32": "fp32"}.get(precision, precision))

    return make


# -- ncnn ---------------------------------------------------------------------------
def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def ncnn_blob_names(net: Any) -> tuple[list[str], list[str]]:
    """A loaded ``ncnn.Net``'s input and output blob names, outputs in natural order
    (``out2`` before ``out10``: pnnx numbers them in the order the model returns them)."""
    inputs, outputs = list(net.input_names()), sorted(net.output_names(), key=_natural_key)
    if not inputs or not outputs:
        raise FormError(f"ncnn model has {len(inputs)} input and {len(outputs)} output blob(s)")
    return inputs, outputs


def ncnn_options(opt: Any, threads: int, fp16: bool) -> None:
    """Set an ``ncnn.Option`` (``net.opt``) for a CPU run; before ``load_param``."""
    opt.num_threads = threads
    opt.use_vulkan_compute = False
    opt.use_packing_layout = True  # SIMD-friendly layout; not a precision
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
    opt.use_bf16_storage = opt.use_bf16_packed = False


def _pnnx_message(completed: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (completed.stderr + "\n" + completed.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def convert_with_pnnx(model: nn.Module, x: torch.Tensor, folder: Path, fp16: bool) -> tuple[Path, Path]:
    """Trace ``model`` on ``x`` and convert it with the pnnx executable inside ``folder``;
    the ncnn ``.param`` and ``.bin`` paths. ``FormError`` with pnnx's last line when it fails."""
    import pnnx

    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), strict=False)
    traced.save(str(folder / "model.pt"))
    shape = ",".join(str(n) for n in x.shape)
    command = [pnnx.EXEC_PATH, "model.pt", f"inputshape=[{shape}]f32", "device=cpu", f"fp16={int(fp16)}",
               "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"]
    try:
        completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S,
                                   check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FormError(f"pnnx could not run: {exc}") from None
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    if completed.returncode != 0:
        raise FormError(f"pnnx exited with status {completed.returncode}: {_pnnx_message(completed)}")
    if not (param.is_file() and weights.is_file()):
        raise FormError(f"pnnx wrote no ncnn model: {_pnnx_message(completed)}")
    return param, weights


def _make_ncnn(fp16: bool) -> Maker:
    def make(model: nn.Module, x: torch.Tensor, threads: int) -> Made:
        import ncnn
        import numpy as np

        if x.shape[0] != 1:
            raise FormError(f"ncnn runs one image per call (batch size 1), not {x.shape[0]}")
        net = ncnn.Net()
        ncnn_options(net.opt, threads, fp16)
        with conversion_folder("ncnn") as folder:
            param, weights = convert_with_pnnx(model, x, folder, fp16)
            if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
                raise FormError(f"ncnn could not load the converted model from {folder}")
        (input_name, *more), output_names = ncnn_blob_names(net)
        if more:
            raise FormError(f"ncnn model has {1 + len(more)} inputs; the model takes one")
        image = np.ascontiguousarray(x.detach().cpu()[0].numpy())
        mat = ncnn.Mat(image)

        def call(keep_alive: Any = image) -> list[Any]:  # the Mat reads image's buffer
            extractor = net.create_extractor()
            extractor.input(input_name, mat)
            out = []
            for name in output_names:
                status, result = extractor.extract(name)
                if status != 0:
                    raise RuntimeError(f"ncnn extract {name!r} returned {status}")
                out.append(result)
            return out

        def outputs(result: Any) -> list[torch.Tensor]:  # ncnn drops the batch dimension
            return [torch.from_numpy(np.array(m)).unsqueeze(0) for m in result]

        version, pnnx_version = package_version("ncnn"), package_version("pnnx")
        options = ("fp16 storage/packed/arithmetic on" if fp16 else
                   "fp16 storage/packed/arithmetic off, bf16 storage off")
        note = (f"torch.jit.trace -> pnnx {pnnx_version} (fp16={int(fp16)}: {'fp16' if fp16 else 'fp32'} weights) "
                f"-> ncnn {version} Net: {threads} thread(s), {options}, packing layout on; "
                f"blobs {input_name} -> {', '.join(output_names)}; one extractor per call")
        return Made(call, note, outputs, runtime=f"ncnn {version}", precision="fp16" if fp16 else "fp32")

    return make


def _ncnn_unavailable(device: torch.device) -> str | None:
    missing = [m for m in ("ncnn", "pnnx") if not _installed(m)]
    if missing:
        return NCNN_INSTALL_HINT.replace("ncnn and pnnx are", f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'}")
    return _cpu_only("ncnn")(device)


register_form(Form("openvino", _make_openvino("f32"), unavailable=_openvino_unavailable("f32")))
register_form(Form("openvino_bf16", _make_openvino("bf16"), BF16_TOLERANCE, _openvino_unavailable("bf16"),
                   low_precision=torch.bfloat16))
register_form(Form("ncnn", _make_ncnn(False), unavailable=_ncnn_unavailable))
register_form(Form("ncnn_fp16", _make_ncnn(True), FP16_TOLERANCE, _ncnn_unavailable, low_precision=torch.float16))
