"""vinbig.devices on machines with 0, 1 and 2 GPUs (torch's answers monkeypatched; the CUDA paths themselves run
on a GPU only): what null becomes for training and for prediction, and the GPU report the notebooks print."""

from __future__ import annotations

import pytest

from conftest import CU130, P100, T4, gpus
from vinbig.devices import Device, gpu_lines, has_kernels, parse_device


@pytest.mark.parametrize("cards, trains_on", [((), "cpu"), ((T4,), "0"), ((T4, T4), "0,1")])
def test_null_trains_on_every_gpu_torch_sees_and_predicts_on_one_device(monkeypatch, cards, trains_on):
    gpus(monkeypatch, *cards)
    for spelling in (None, "auto", "null", ""):
        device = parse_device(spelling)
        assert device.resolve().ultralytics == trains_on
        assert device.ultralytics is None  # prediction: ultralytics' choice of one device


@pytest.mark.parametrize("cards", [(), (T4, T4)])
def test_a_device_named_in_the_config_is_kept_whatever_the_machine(monkeypatch, cards):
    gpus(monkeypatch, *cards)
    assert parse_device("cpu").resolve() == Device("cpu")
    assert parse_device(1).resolve().ultralytics == "1"
    assert parse_device([0, 1]).resolve().ultralytics == "0,1"
    assert parse_device("cuda").resolve().ultralytics == "0"


@pytest.mark.parametrize("capability, arch, expected", [
    ((6, 0), CU130, False),  # a P100 under a CUDA 13 torch
    ((7, 5), CU130, True),  # a T4
    ((8, 9), ["sm_80", "sm_86"], True),  # an sm_86 binary runs on a later minor version of the same major one
    ((8, 0), ["sm_86"], False),  # but not on an earlier one
    ((12, 1), ["sm_90", "compute_90"], True),  # PTX is compiled for a later GPU by the driver
    ((8, 0), ["sm_90", "compute_90"], False),
])
def test_has_kernels_follows_cudas_compatibility_rules(capability, arch, expected):
    assert has_kernels(capability, arch) is expected


def test_gpu_lines_name_each_gpu_and_warn_of_one_the_build_cannot_run_on(monkeypatch):
    gpus(monkeypatch, T4, P100)
    lines = gpu_lines()
    assert f"kernels for: {' '.join(CU130)}" in lines[0]
    assert "GPU 0: Tesla T4, 15 GiB, sm_75" in lines and "GPU 1: Tesla P100-PCIE-16GB, 16 GiB, sm_60" in lines
    [warning] = [line for line in lines if line.startswith("warning")]
    assert "no kernels for GPU 1 (Tesla P100-PCIE-16GB, sm_60)" in warning and "GPU T4 x2" in warning


def test_gpu_lines_without_a_gpu(monkeypatch):
    gpus(monkeypatch)
    assert gpu_lines()[1:] == ["GPUs: none"]
    gpus(monkeypatch, arch=[])  # a CPU build of torch
    assert "kernels for: no GPU architecture" in gpu_lines()[0]
