"""The pins in pyproject.toml, the Dockerfiles and STACK agree; the setup script is wired right."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    pins = {}
    for r in reqs:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]+\])?==([^;\s]+)", r)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_pyproject_pins_the_verified_stack():
    pins = _pins()
    expected = {"pyspark": "4.0.5", "pyarrow": "14.0.2", "numpy": "1.26.4", "pandas": "2.2.3",
                "tensorflow-cpu": "2.15.1", "tensorflow": "2.15.1", "horovod": "0.28.1",
                "petastorm": "0.13.1", "mlflow": "3.17.2"}
    assert {k: pins.get(k) for k in expected} == expected
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].startswith(">=3.11")
    assert "setuptools<70" in project["dependencies"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_use_the_pyproject_pins(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    pins = _pins()
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow-cpu"] == pins["tensorflow"]
    assert args["HOROVOD_VERSION"] == pins["horovod"]
    assert args["PYSPARK_VERSION"] == pins["pyspark"]
    assert args["PYTHON_VERSION"] == "3.11"
    assert "numpy==" + pins["numpy"] in text
    # TensorFlow must be installed before Horovod is built against it
    assert text.index("tensorflow") < text.index("horovod==")
    variant = "cpu" if dockerfile.endswith("cpu") else "gpu"
    assert f'.[{variant},cluster]' in text
    assert ("HOROVOD_CPU_OPERATIONS=gloo" if variant == "cpu" else "HOROVOD_GPU_OPERATIONS=NCCL") in text


def test_setup_builds_horovod_after_tensorflow_with_the_stack_flags():
    text = (REPO / "setup.sh").read_text()
    for flag in ("HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITHOUT_MPI=1", "HOROVOD_WITH_GLOO=1",
                 "--no-build-isolation", "horovod==0.28.1"):
        assert flag in text
    assert text.index('"$tf_req"') < text.index("horovod==0.28.1")


def test_horovod_in_the_venv_has_tensorflow_and_gloo():
    import subprocess
    import sys
    horovodrun = Path(sys.executable).with_name("horovodrun")
    out = subprocess.run([str(horovodrun), "--check-build"], capture_output=True, text=True, timeout=120)
    assert "[X] TensorFlow" in out.stdout and "[X] Gloo" in out.stdout, out.stdout + out.stderr


def test_the_wheel_ships_every_package_and_the_bundled_lung_weights(tmp_path):
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("cxrspark-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "cxrspark").rglob("*.py")}
    assert all(f"{pkg}/__init__.py" in names for pkg in packages), sorted(packages)
    assert {"cxrspark/segmentation/lung_unet/lung_unet.h5", "cxrspark/segmentation/lung_unet/manifest.json",
            "cxrspark/segmentation/lung_unet/CARD.md"} <= names


def test_modules_import_downward_only():
    """Training, tracking and prediction never import the evaluation package (the metric core they
    share lives below all of them, in cxrspark/metrics.py), and the leaves import no cxrspark module
    above them."""
    import ast

    root = Path(__file__).resolve().parents[1] / "cxrspark"

    def imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    lower = [*root.joinpath("train").glob("*.py"), root / "tracking.py", root / "predict.py"]
    offenders = {str(p.relative_to(root)): sorted(m for m in imports(p) if m.startswith("cxrspark.evaluate"))
                 for p in lower}
    assert not {k: v for k, v in offenders.items() if v}, offenders
    assert "cxrspark.metrics" in imports(root / "train" / "loop.py") and "cxrspark.metrics" in imports(root / "tracking.py")
    leaf = {m for m in imports(root / "metrics.py") if m.startswith("cxrspark")}
    assert not leaf, leaf
