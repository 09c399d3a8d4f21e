"""The configs ship inside the package: a built wheel, installed alone, composes and runs the CLI."""

import os
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_carries_configs_and_composes_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("sngm_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for path in ["configs/config.yaml", "configs/experiment/smoke.yaml", "configs/optimizer/sngm.yaml",
                 "configs/model/resnet50.yaml", "configs/schedule/poly.yaml", "configs/sweep/smoke.yaml", "cli.py", "__main__.py"]:
        assert f"sngm_bench/{path}" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import sngm_bench; from sngm_bench.config import compose_config; "
             "print(sngm_bench.__file__); print(compose_config(['experiment=smoke', 'optimizer=msgd']).name)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    module_file, name = out.stdout.split()
    assert module_file.startswith(str(site)) and name == "smoke"
    cli = subprocess.run([sys.executable, "-m", "sngm_bench", "experiment=smoke", "--cfg", "job"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "name: smoke" in cli.stdout
