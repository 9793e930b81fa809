"""Precision and layout per device; parts of a split that share one copy of the pixels, also across processes."""
import pickle

import numpy as np
import pytest
import torch

from data_utils.dataset import load_faces, make_split
from experiments import device as dev
from experiments.config import TrainConfig
from experiments.train import TensorData, Trainer, fit_parts, predict
from models import build_model


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(*flags):
        monkeypatch.setattr(dev, "_cpuinfo", lambda: ("Test CPU", frozenset(flags)))
    return set_flags


def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(cpu_flags):
    cpu = torch.device("cpu")
    cpu_flags("avx2", "avx512f")
    assert dev.resolve_precision("auto", cpu).dtype is None
    cpu_flags("avx512f", "avx512_bf16")
    assert dev.resolve_precision("auto", cpu).dtype == torch.bfloat16
    cpu_flags("amx_bf16")
    assert dev.resolve_precision("auto", cpu).name == "bf16"
    # measured: MobileNetV2 trains slower in bf16 on a CPU below 128 px, so auto keeps it in fp32 there
    assert dev.resolve_precision("auto", cpu, arch="pretrained", image_size=64).name == "fp32"
    assert dev.resolve_precision("auto", cpu, arch="pretrained", image_size=128).name == "bf16"
    assert dev.resolve_precision("auto", cpu, arch="scratch", image_size=48).name == "bf16"
    assert dev.resolve_precision("bf16", cpu, arch="pretrained").name == "bf16"
    assert dev.resolve_precision("fp32", cpu).dtype is None and dev.resolve_precision("bf16", cpu).name == "bf16"
    assert dev.resolve_precision("auto", cpu).channels_last
    assert "bf16 on Test CPU" in dev.resolve_precision("bf16", cpu).describe(cpu)
    with pytest.raises(ValueError, match="valid: auto, bf16, fp32"):
        dev.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig.from_dict({"precision": "half"})


@pytest.fixture(scope="module")
def faces(data_dir):
    return load_faces(data_dir, 32)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_and_evaluation_run_in_the_chosen_precision(faces, precision):
    cfg = TrainConfig.from_dict({"image_size": 32, "max_images": 300, "batch_size": 32, "depth": 2, "base_width": 8,
                                 "dense_units": 16, "epochs": 1, "device": "cpu", "precision": precision})
    split = make_split(faces, max_images=300)
    train, val = fit_parts(faces, split, cfg)
    trainer = Trainer(cfg, train, val)
    seen = []
    hook = trainer.model.backbone.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    metrics = next(trainer.epochs())
    hook.remove()
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {dtype for _, dtype in seen} == {want}  # training batches and the evaluation alike
    assert {training for training, _ in seen} == {True, False}
    assert np.isfinite(metrics["val_age_mae"])
    assert trainer.model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_scoring_batches_by_the_device_and_the_batch_size_changes_no_prediction(faces, monkeypatch):
    assert dev.eval_batch_size(torch.device("cpu")) == dev.EVAL_BATCH_SIZE["cpu"] < 512
    assert dev.eval_batch_size(torch.device("meta")) == 512
    cfg = TrainConfig.from_dict({"image_size": 32, "depth": 2, "base_width": 8, "dense_units": 16})
    model = build_model(cfg).eval()
    images = faces.images[:70]  # two full default batches and a partial one
    sizes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (sizes.append(x.shape[0]), forward(x))[1])
    age, prob = predict(model, images)
    assert sizes == [32, 32, 6]
    age_512, prob_512 = predict(model, images, batch_size=512)
    assert sizes[3:] == [70]
    torch.testing.assert_close(age, age_512, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prob, prob_512, rtol=1e-4, atol=1e-5)


def test_split_parts_share_the_pixels(faces):
    split = make_split(faces, max_images=300)
    cfg = TrainConfig.from_dict({"image_size": 32})
    train, val = fit_parts(faces, split, cfg)
    assert train.images.data_ptr() == val.images.data_ptr() == faces.images.data_ptr()
    data = TensorData.from_faces(train, torch.device("cpu"))
    assert data.images.data_ptr() == faces.images.data_ptr() and len(data) == len(split.train)
    assert torch.equal(data.batch(torch.tensor([0, 5])), faces.images[split.train[[0, 5]]])
    assert torch.equal(train.pixels(), faces.subset(split.train).images)


def test_faces_pickle_their_pixels_out_of_band(faces):
    """What Ray's object store relies on to give every process of a node one shared copy (pickle protocol 5)."""
    buffers = []
    data = pickle.dumps(faces, protocol=5, buffer_callback=buffers.append)
    assert len(data) < 2_000_000 < faces.images.numel()  # the pixels are not in the pickle itself
    shared = bytearray(buffers[0].raw())  # stands in for the object store's memory
    back = pickle.loads(data, buffers=[shared, *buffers[1:]])
    assert torch.equal(back.images, faces.images) and back.names == faces.names
    shared[0] ^= 0xFF  # the unpickled tensor is a view of that memory, not a copy
    assert back.images.flatten()[0] != faces.images.flatten()[0]
