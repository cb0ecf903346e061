"""Attack session 17b: the user who runs ``dvc repro`` on a local GPU box, and the services it talks to.

No GPU here: where a test needs ``torch.cuda``'s answers it fakes them with what PyTorch documents
them to answer (``torch.cuda.is_bf16_supported``: "if the *current* CUDA device supports
bfloat16", ``including_emulation=True`` by default, i.e. also on pre-Ampere GPUs where a bf16
tensor can merely be created; ``get_device_properties``/``get_device_capability`` per device).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from servers import answering, serve_http

from hsnet.errors import HSNetError


# --- 1. MLflow over HTTPS with a private CA or MLFLOW_TRACKING_INSECURE_TLS ------------------------

def test_a_tracking_server_behind_a_private_ca_given_in_mlflows_cert_variable_is_reachable(
        https_tracking_server, monkeypatch):
    """MLflow verifies the tracking server with ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (requests'
    ``verify``: mlflow/environment_variables.py, mlflow/utils/rest_utils.py MlflowHostCreds.verify);
    hsnet's own pre-flight health check must accept what MLflow accepts, else every train/evaluate
    refuses to start with "unreachable" against a server MLflow talks to fine."""
    import requests

    from hsnet import tracking

    url, cert = https_tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    assert requests.get(url + "/health", verify=str(cert), timeout=5).status_code == 200  # what MLflow does
    tracking.check_reachable(url)  # raises TrackingUnavailable (CERTIFICATE_VERIFY_FAILED) today


def test_a_tracking_server_with_mlflow_tracking_insecure_tls_is_reachable(https_tracking_server, monkeypatch):
    """``MLFLOW_TRACKING_INSECURE_TLS=true``: MLflow sends its requests with ``verify=False``."""
    from hsnet import tracking

    url, _ = https_tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    tracking.check_reachable(url)


# --- 2. which GPU's numerics: bf16 where the chosen GPU has it, fp16 needs loss scaling ---------------

def _fake_gpus(monkeypatch, majors: list[int]):
    """``len(majors)`` visible GPUs of these compute capabilities, device 0 current; answers as PyTorch
    documents them (is_bf16_supported: the *current* device; with emulation, any CUDA GPU)."""
    cuda = torch.cuda
    props = lambda d=None: SimpleNamespace(major=majors[_index(d)], minor=0, name=f"GPU{_index(d)}",  # noqa: E731
                                           total_memory=80 << 30)

    def _index(d):
        if d is None:
            return 0
        if isinstance(d, int):
            return d
        d = torch.device(d)
        return d.index or 0

    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: len(majors))
    current = [0]
    monkeypatch.setattr(cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(cuda, "set_device", lambda d: current.__setitem__(0, _index(d)))
    monkeypatch.setattr(cuda, "get_device_properties", props)
    monkeypatch.setattr(cuda, "get_device_capability", lambda d=None: (majors[_index(d)], 0))
    monkeypatch.setattr(cuda, "get_device_name", lambda d=None: f"GPU{_index(d)}")
    monkeypatch.setattr(cuda, "is_bf16_supported",
                        lambda including_emulation=True: majors[0] >= 8 or including_emulation)


@pytest.fixture
def _keep_backends():
    from tf32 import restore, saved

    before, bench = saved(), torch.backends.cudnn.benchmark
    yield
    restore(before)
    torch.backends.cudnn.benchmark = bench


@pytest.mark.usefixtures("_keep_backends")
def test_a_v100_is_not_given_emulated_bf16_autocast(monkeypatch):
    """pick_device means bf16 where the GPU has it and fp16 elsewhere; PyTorch's is_bf16_supported()
    counts emulation by default (torch/cuda/__init__.py: ``including_emulation=True``: True on a
    compute-capability-7 GPU where a bf16 tensor can be created), so a V100/T4 gets bf16 autocast,
    which it has no tensor-core support for (Ampere, sm_80, is the first)."""
    from hsnet.device import pick_device

    _fake_gpus(monkeypatch, [7])
    assert pick_device("cuda").amp_dtype != torch.bfloat16


@pytest.mark.usefixtures("_keep_backends")
def test_cuda_1_gets_the_numerics_of_gpu_1_not_of_gpu_0(monkeypatch):
    """A box with an A100 (cuda:0) and a V100 (cuda:1): ``--device cuda:1`` must be set up for the
    V100; is_bf16_supported() answers for the current device (cuda:0)."""
    from hsnet.device import pick_device

    _fake_gpus(monkeypatch, [8, 7])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False
                        if torch.cuda.current_device() == 1 else True)
    assert pick_device("cuda:1").amp_dtype != torch.bfloat16


@pytest.mark.usefixtures("_keep_backends")
def test_a_gpu_index_that_is_not_there_is_refused_by_name(monkeypatch):
    """``--device cuda:1`` on a one-GPU box (or CUDA_VISIBLE_DEVICES=1 hiding the rest): PyTorch
    only fails later, on the first copy ("CUDA error: invalid device ordinal", a traceback); the
    device check that names the problem for 'no GPU at all' should name this one too."""
    from hsnet.device import pick_device

    _fake_gpus(monkeypatch, [9])
    with pytest.raises(HSNetError, match="cuda:1"):
        pick_device("cuda:1")


def test_float16_autocast_training_scales_the_loss():
    """Where autocast runs in float16 (pick_device's choice for a GPU without bf16), PyTorch's AMP
    docs require a GradScaler: "Gradient values with small magnitudes may not be representable in
    float16. These values will flush to zero ('underflow'), so the update for the corresponding
    parameters will be lost" (https://pytorch.org/docs/stable/amp.html#gradient-scaling). A step of
    hsnet's trainer under fp16 autocast with gradients of ~1e-9 must still move the weights (the
    same step in fp32, or with a GradScaler, does)."""
    from hsnet.device import Setup
    from hsnet.step import Step

    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            with torch.no_grad():
                self.fc.weight.zero_()
                self.fc.bias.copy_(torch.tensor([12.0, -12.0]))  # p(class 1) ~ 4e-11: tiny gradients

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    def one_step(amp):
        model = Tiny()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        step = Step(model, Setup(torch.device("cpu"), amp, False), opt)
        step.begin()
        x = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
        step(x, torch.zeros(4, dtype=torch.long))
        return model.fc.weight.detach().abs().sum().item()

    assert one_step(None) > 0  # fp32: the weights move
    assert one_step(torch.float16) > 0  # fp16 without loss scaling: the gradient underflows to 0


# --- 3. out of GPU memory: a clear error that says what to lower ---------------------------------------

def test_training_out_of_gpu_memory_ends_with_a_message_naming_what_to_lower(tiny_data, tiny_params, tmp_path,
                                                                               monkeypatch, capsys):
    """A GPU too small, or already busy with another job (data_on_device auto only checks that the
    splits fit in what is free, then the model needs its share on top): PyTorch raises
    ``torch.OutOfMemoryError`` mid-step. ``hsnet train`` must end as its other errors do (exit 2, one
    line on stderr) and name what to lower (train.batch_size, train.data_on_device), not print a
    traceback out of ``main``."""
    from hsnet import cli
    from hsnet.step import Step

    def oom(self, x, y, *a):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 23.64 GiB of which 1.06 GiB is free.")

    monkeypatch.setattr(Step, "__call__", oom)
    out = tmp_path / "run"
    try:
        rc = cli.main(["train", "--data", str(tiny_data), "--dataset", "sample", "--params", str(tiny_params),
                       "--out", str(out), "--device", "cpu", "--no-mlflow"])
    except torch.OutOfMemoryError:
        pytest.fail("torch.OutOfMemoryError escaped hsnet train as a traceback")
    err = capsys.readouterr().err
    assert rc != 0 and "batch_size" in err


# --- 4. what a run records about where it ran ------------------------------------------------------------

def test_a_run_on_the_cpu_of_a_gpu_box_records_the_cpu_as_its_device(tiny_data, local_mlflow, monkeypatch,
                                                                       tmp_path):
    """``hsnet train --device cpu`` (or cuda:1) on a GPU box: the run's ``system.device`` tag, which
    hsnet records as what the run's numbers depend on (tracking.system_tags), must be the device
    it trained on, not GPU 0's name whenever a GPU is visible."""
    import mlflow

    from hsnet.params import Params
    from hsnet.train import train

    from hsnet import tracking

    original = tracking.system_tags

    def on_a_gpu_box(*args, **kwargs):  # a GPU visible while the tags are read (globally, Adam's
        with pytest.MonkeyPatch.context() as m:  # CPU step would ask the missing driver too)
            m.setattr(torch.cuda, "is_available", lambda: True)
            m.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
            return original(*args, **kwargs)

    monkeypatch.setattr(tracking, "system_tags", on_a_gpu_box)
    one_epoch = tmp_path / "params.yaml"
    one_epoch.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                         "    train: {epochs: 1, batch_size: 16, seed: 3}\n")
    summary = train(tiny_data, Params.resolve(one_epoch, "sample"), tmp_path / "run", device="cpu", progress=False)
    assert summary["device"] == "cpu"
    tags = mlflow.MlflowClient().get_run(summary["mlflow_run_id"]).data.tags
    assert "H200" not in tags["system.device"], tags["system.device"]


# --- 5. the pre-flight health check and the tracking credentials ------------------------------------------

def test_the_health_check_does_not_send_the_tracking_credentials_to_another_host_on_a_redirect(monkeypatch):
    """The tracking server's /health redirects elsewhere (an SSO proxy's login page, a moved
    host). hsnet's health check puts MLFLOW_TRACKING_USERNAME/PASSWORD (or the token) in an
    Authorization header; urllib copies every header into the redirected request
    (urllib/request.py HTTPRedirectHandler.redirect_request), so the password goes to the other
    host. requests, which MLflow itself uses, drops Authorization when a redirect leaves the host
    (psf/requests sessions.py, SessionRedirectMixin.rebuild_auth / should_strip_auth)."""
    import requests

    from hsnet import tracking

    seen = []
    other = serve_http(answering(200, body=b"OK", seen=seen))
    other_url = f"http://localhost:{other.server_address[1]}/login"  # another host name than 127.0.0.1
    tracking_server = serve_http(answering(302, {"Location": other_url}))
    try:
        url = f"http://127.0.0.1:{tracking_server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pw")
        requests.get(url + "/health", auth=("alice", "s3cret-pw"), timeout=5)  # what MLflow's transport does
        assert seen == [None]
        tracking.check_reachable(url)
        assert seen[1:] == [None], f"the other host got {seen[1:]}"
    finally:
        for s in (other, tracking_server):
            s.shutdown()
            s.server_close()


# --- 6. data_on_device auto on a GPU another job already uses ---------------------------------------------

def test_auto_does_not_put_the_data_on_a_busy_gpu_when_it_leaves_no_room_to_train(monkeypatch):
    """``train.data_on_device: auto`` is meant to choose the faster path where it works. On a GPU
    another job already holds most of (the brief's "GPU already busy"), splits that fit in what is
    free with 1 MiB to spare leave nothing for what training allocates after the check
    (hsnet.train places the model before it, but Adam's state, the gradients, the activations,
    cuDNN's workspace and CUDA graph pools come later; README: one run at batch 32 uses 0.27 GiB
    besides its data): the run then dies of an out-of-memory error that the host pipeline (auto's
    other choice) would not have hit."""
    import numpy as np

    from hsnet.tensors import Split, data_on_device, split_bytes

    split = Split(np.zeros((64, 3, 80, 80), dtype=np.uint8), torch.zeros(64, dtype=torch.long), ["x"] * 64)
    need = split_bytes(split)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need + (1 << 20), 24 << 30))
    assert not data_on_device([split], torch.device("cuda"), "auto", 0.5)


# --- 7. the tracking server goes down mid-training ---------------------------------------------------------

@pytest.mark.parametrize("lost_in, epochs", [("log_metrics", 2), ("log_artifact", 1)],
                         ids=["an-epochs-metrics", "the-final-upload-of-best.pt"])
def test_a_tracking_server_lost_mid_training_ends_with_a_message_and_the_way_to_resume(
        tiny_data, local_mlflow, tmp_path, monkeypatch, capsys, lost_in, epochs):
    """The server answered the pre-flight check, then goes away (restart, network): MLflow raises
    MlflowException once its retries are spent, while an epoch's metrics are logged or while
    train uploads best.pt after the last epoch (17d: only the first was guarded). README: "An
    unreachable server stops the command before training starts"; once training runs, the
    command should still end as hsnet's errors do (exit 2, "hsnet train: error: ...") and say
    that the finished epochs are in last.pt and how to continue (as a Ctrl-C does), not end in a
    traceback out of main()."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from hsnet import cli

    def down(*args, **kwargs):
        raise MlflowException("API request to http://mlflow.example:5000/api/2.0/mlflow/... failed with "
                              "exception HTTPConnectionPool(host='mlflow.example', port=5000): Max retries exceeded")

    monkeypatch.setattr(mlflow, lost_in, down)
    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                      f"    train: {{epochs: {epochs}, batch_size: 16, seed: 3}}\n")
    try:
        rc = cli.main(["train", "--data", str(tiny_data), "--dataset", "sample", "--params", str(params),
                       "--out", str(tmp_path / "run"), "--device", "cpu"])
    except MlflowException:
        pytest.fail("the tracking error escaped hsnet train as a traceback")
    err = capsys.readouterr().err
    assert rc == 2 and "hsnet train: error:" in err and "--resume" in err, err


# --- 8. dvc repro: Python's bytecode cache inside the stages' directory dependencies -------------------

def test_bytecode_python_writes_into_hsnet_model_and_data_does_not_make_the_stages_dirty(tmp_path):
    """dvc.yaml lists ``hsnet/model`` (train, evaluate, register) and ``hsnet/data`` (register) as
    directory dependencies. On a user's box Python writes ``__pycache__/*.pyc`` beside the modules
    it imports (this test machine sets PYTHONDONTWRITEBYTECODE=1, and tests/dvcrepo.py copies
    hsnet/ without __pycache__, so the suite never sees it). DVC hashes every file of a directory
    dependency that .dvcignore doesn't exclude; .gitignore's ``__pycache__/`` does not count
    (https://dvc.org/doc/user-guide/project-structure/dvcignore-files). So after ``make pipeline``,
    running ``hsnet model-info`` (README; it imports hsnet/model/info.py, which training doesn't), a
    new Python version of the venv or deleting the caches makes train@/evaluate@ "changed deps" and
    the next ``dvc repro`` re-runs them: README: "A second `make pipeline` with nothing changed trains
    nothing". Real dvc, the project's .dvcignore and its directory dependencies."""
    import os
    import py_compile
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    dirs = sorted({d for s in stages.values() for d in (s["do"].get("deps") or [])
                   if isinstance(d, str) and d.startswith("hsnet/") and (root / d).is_dir()})
    assert "hsnet/model" in dirs
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(root / "hsnet", repo / "hsnet", ignore=shutil.ignore_patterns("__pycache__"))
    if (root / ".dvcignore").is_file():
        shutil.copy(root / ".dvcignore", repo / ".dvcignore")
    shutil.copy(root / ".gitignore", repo / ".gitignore")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": "echo done > out.txt", "deps": dirs,
                                                                    "outs": ["out.txt"]}}}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    for d in dirs:  # what `import hsnet.model.info` etc. leave with bytecode writing on (Python's default)
        for src in (repo / d).glob("*.py"):
            py_compile.compile(str(src), cfile=_bytecode_path(src), doraise=True)
    assert sh("dvc", "status", "--json").strip() in ("{}", ""), "the stages' dependencies changed"


def _bytecode_path(src):
    import importlib.util

    return importlib.util.cache_from_source(str(src))
