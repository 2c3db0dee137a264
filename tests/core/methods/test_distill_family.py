"""The distillation family on tiny models with real training steps: cached teachers, several
teachers (torch and ONNX), an ONNX-only teacher in onnxruntime, self-distillation through
auxiliary heads, and mutual learning."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError, TrustRequired
from studio.core.export.measure import ort_session
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken
from studio.core.methods.distill import FeaturePair, KDConfig, make_kd_loss, training_parameters
from studio.core.methods.distill.cache import CachedTeacher, TeacherCache
from studio.core.methods.distill.distiller import CacheSettings
from studio.core.methods.distill.losses import confidence_soft_targets
from studio.core.methods.distill.mutual import MutualLoss, make_peer
from studio.core.methods.distill.self_distill import SelfDistillLoss, default_self_layers
from studio.core.methods.distill.sources import open_teacher
from studio.core.methods.distill.teachers import OnnxTeacher, TorchTeacher
from studio.core.models.onnx_file import load_onnx
from studio.core.train.loop import TrainConfig, cross_entropy, train


class TinyCNN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@pytest.fixture
def data() -> TensorDataset:
    """Four classes of 8x8 images told apart by which quadrant is bright."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 4
    images = torch.rand(96, 1, 8, 8, generator=generator) * 0.5
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 1.0
    return TensorDataset(images, labels)


def trained_teacher(data: TensorDataset, width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN(width)
    for _ in train(model, data, TrainConfig(epochs=3, lr=1e-2, batch_size=16, seed=seed),
                   CancelToken()):
        pass
    return model.eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cache_returns_the_teachers_exact_outputs_and_the_teacher_stays_bit_identical(
        data, tmp_path):
    teacher = trained_teacher(data)
    before = state(teacher)
    plain = TorchTeacher(copy.deepcopy(teacher), ["stem"])
    cached = CachedTeacher(TorchTeacher(teacher, ["stem"]),
                           TeacherCache(len(data), "disk", tmp_path / "cache"))
    images = data.tensors[0]
    for epoch in range(2):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(images), 20):  # batches that straddle cached rows
            batch = images[order[start:start + 20]]
            got, want = cached(batch), plain(batch)
            assert torch.equal(got.logits, want.logits)
            assert torch.equal(got.features["stem"], want.features["stem"])
    stats = cached.cache.stats()
    assert (stats.hits, stats.misses, stats.on_disk) == (96, 96, True)
    assert stats.hit_rate == 0.5
    assert stats.bytes == 96 * (4 + 8 * 8 * 8) * 4
    assert (tmp_path / "cache" / "logits.npy").is_file()
    cached.close()
    assert not (tmp_path / "cache").exists()  # the cache is no output of the run
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_kd_with_a_cache_trains_the_student_as_without_and_reports_hits(data, tmp_path):
    teacher = trained_teacher(data)
    before = state(teacher)
    results = []
    for cache in (None, CacheSettings(len(data), "memory")):
        torch.manual_seed(1)
        student = TinyCNN(4)
        setup = make_kd_loss(student, copy.deepcopy(teacher), KDConfig(alpha=0.7),
                             data.tensors[0][:2], cache)
        try:
            for _ in train(student, data, TrainConfig(epochs=2, lr=1e-2, batch_size=16),
                           CancelToken(), setup.loss_fn,
                           parameters=training_parameters(student, setup.extra_parameters)):
                pass
            results.append((state(student), setup.loss_fn.cache_stats()))
        finally:
            setup.close()
    (uncached, no_stats), (with_cache, stats) = results
    # The teacher ran once per sample; every later look-up (the second epoch, and the batch the
    # memory estimate runs before training) was served from the cache.
    assert no_stats == [] and not stats[0].on_disk
    assert stats[0].misses == len(data) and stats[0].hits >= len(data)
    assert all(torch.allclose(uncached[k].float(), with_cache[k].float(), atol=1e-5)
               for k in uncached)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.fixture
def onnx_teacher_file(data, tmp_path):
    teacher = trained_teacher(data, width=12, seed=3)
    path = export_onnx(teacher, data.tensors[0][:2], tmp_path / "teacher.onnx")
    return teacher, path


def _relu_output(path) -> str:
    graph = onnx.load(str(path)).graph
    return next(node.output[0] for node in graph.node if node.op_type == "Relu")


def test_onnx_teacher_outputs_equal_onnxruntimes_on_the_same_inputs(data, onnx_teacher_file):
    source, path = onnx_teacher_file
    hidden = _relu_output(path)
    loaded = load_onnx(path)
    teacher = OnnxTeacher(path, loaded.onnx_model, [hidden])
    inputs = data.tensors[0][:10]
    got = teacher(inputs)
    session = ort_session(path)
    want = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    assert np.array_equal(got.logits.numpy(), want)
    # the intermediate tensor is the exported torch model's stem output (Conv, BN, Relu)
    with torch.no_grad():
        stem = source.stem(inputs).numpy()
    assert got.features[hidden].shape == (10, 12, 8, 8)
    assert np.allclose(got.features[hidden].numpy(), stem, atol=1e-5)
    assert onnx.load(str(path)).graph.output[0].name == loaded.onnx_model.graph.output[0].name


def test_an_onnx_teacher_teaches_a_torch_student_through_logits_and_a_feature(
        data, onnx_teacher_file):
    _, path = onnx_teacher_file
    hidden = _relu_output(path)
    teacher = open_teacher(str(path), nn.Identity(), [hidden])
    assert isinstance(teacher, OnnxTeacher)
    torch.manual_seed(0)
    student = TinyCNN(4)
    config = KDConfig(feature_pairs=(FeaturePair("stem", hidden),))
    setup = make_kd_loss(student, teacher, config, data.tensors[0][:2])
    assert setup.extra_parameters  # 4 -> 12 channels: a learned projection
    images, labels = data.tensors
    params = training_parameters(student, setup.extra_parameters)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        loss = setup.loss_fn(student, images, labels)
        loss.backward()
        optimizer.step()
        first = first if first is not None else float(loss.detach())
    assert float(setup.loss_fn.last["feature/stem"]) > 0
    assert float(loss.detach()) < 0.7 * first
    setup.close()


def test_onnx_teacher_names_and_shapes_are_checked_up_front(data, onnx_teacher_file, tmp_path):
    _, path = onnx_teacher_file
    hidden = _relu_output(path)
    with pytest.raises(StudioError, match=f"no tensor named '{hidden}x' .*did you mean"):
        open_teacher(str(path), nn.Identity(), [hidden + "x"])
    other = TinyCNN(4, classes=7)
    wrong = export_onnx(other, data.tensors[0][:2], tmp_path / "seven.onnx")
    with pytest.raises(StudioError, match=r"gives outputs of shape \[2, 7\] where the student "
                                          r"gives \[2, 4\]"):
        make_kd_loss(TinyCNN(4), open_teacher(str(wrong), nn.Identity()), KDConfig(),
                     data.tensors[0][:2])


def test_a_pickled_teacher_needs_the_jobs_trust(data, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(trained_teacher(data), path)
    with pytest.raises(TrustRequired):
        open_teacher(str(path), nn.Identity())
    teacher = open_teacher("teacher.pt", nn.Identity(), trust=True, base_dir=tmp_path)
    assert teacher(data.tensors[0][:3]).logits.shape == (3, 4)


def test_confidence_weighting_lets_the_sure_teacher_decide_each_sample():
    sure = torch.tensor([[8.0, 0.0], [0.0, 0.1]])
    unsure = torch.tensor([[0.0, 0.1], [0.0, 8.0]])
    probs = confidence_soft_targets([sure, unsure], 1.0)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    fixed = confidence_soft_targets([sure, unsure], 1.0, [1.0, 0.0])
    assert torch.allclose(fixed, F.softmax(sure, -1))


def test_several_teachers_torch_and_onnx_with_confidence_weighting_train(
        data, onnx_teacher_file):
    onnx_source, path = onnx_teacher_file
    torch_teacher = trained_teacher(data)
    before = [state(torch_teacher), state(onnx_source)]
    torch.manual_seed(0)
    student = TinyCNN(8)
    setup = make_kd_loss(student, [torch_teacher, open_teacher(str(path), nn.Identity())],
                         KDConfig(temperature=2.0, alpha=0.5, teacher_weights=(1.0, 2.0),
                                  teacher_weighting="confidence"),
                         data.tensors[0][:2], CacheSettings(len(data)))
    for _ in train(student, data, TrainConfig(epochs=6, lr=1e-2, batch_size=16),
                   CancelToken(), setup.loss_fn,
                   parameters=training_parameters(student, setup.extra_parameters)):
        pass
    for stats in setup.loss_fn.cache_stats():  # each teacher ran once per sample
        assert stats.misses == len(data) and stats.hits >= 5 * len(data)
    setup.close()
    accuracy = (student(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean()
    assert accuracy > 0.9
    assert all(torch.equal(before[0][k], v) for k, v in torch_teacher.state_dict().items())


def _disagreement(a: nn.Module, b: nn.Module, images: torch.Tensor) -> float:
    a.eval()
    b.eval()
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(a(images), -1), F.log_softmax(b(images), -1),
                              reduction="batchmean", log_target=True))


def test_mutual_learning_lowers_the_students_disagreement(data):
    """Two students from different starting weights: trained together they end closer to
    each other than the same two trained apart on the same batches."""
    torch.manual_seed(0)
    first = TinyCNN(8)
    torch.manual_seed(1)
    second = TinyCNN(8)
    config = TrainConfig(epochs=4, lr=3e-3, batch_size=16)
    images = data.tensors[0]
    apart = [copy.deepcopy(first), copy.deepcopy(second)]
    for model in apart:
        for _ in train(model, data, config, CancelToken(), cross_entropy):
            pass
    model, peer = copy.deepcopy(first), copy.deepcopy(second)
    start = _disagreement(model, peer, images)
    mutual = MutualLoss(model, peer, temperature=1.0, alpha=0.5)
    for _ in train(model, data, config, CancelToken(), mutual,
                   parameters=training_parameters(model, list(peer.parameters()))):
        pass
    together = _disagreement(model, peer, images)
    assert together < 0.75 * _disagreement(*apart, images) and together < 0.2 * start
    assert set(mutual.last) == {"model", "peer"}
    for student in (model, peer):
        assert (student(images).argmax(1) == data.tensors[1]).float().mean() > 0.5


def test_a_peer_starts_near_its_model_but_not_on_it():
    torch.manual_seed(0)
    model = TinyCNN(8)
    peer = make_peer(model, seed=0)
    pairs = [(a.detach(), b.detach()) for a, b in zip(model.parameters(), peer.parameters(),
                                                      strict=True)]
    changed = [(a, b) for a, b in pairs if a.numel() > 1 and bool(a.abs().sum() > 0)]
    assert len(changed) == 7 and all(not torch.equal(a, b) for a, b in changed)
    assert all((a - b).abs().max() < 0.15 * (float(a.std()) or 1.0) for a, b in changed)


def test_self_distillation_heads_are_gone_from_the_export_which_matches_torch(data, tmp_path):
    torch.manual_seed(0)
    model = TinyCNN(6)
    assert default_self_layers(model) == ["stem", "body"]
    loss = SelfDistillLoss(model, ["stem", "body"], data.tensors[0][:2])
    head_weights = sum(p.numel() for p in loss.extra_parameters)
    for _ in train(model, data, TrainConfig(epochs=2, lr=1e-2, batch_size=16), CancelToken(),
                   loss, parameters=training_parameters(model, loss.extra_parameters)):
        pass
    assert set(loss.last) == {"aux/stem", "aux/body"}
    loss.close()
    path = export_onnx(model, data.tensors[0][:2], tmp_path / "self.onnx")
    graph = onnx.load(str(path)).graph
    exported = sum(int(np.prod(t.dims)) for t in graph.initializer)
    params = sum(p.numel() for p in model.parameters())
    bn_buffers = 2 * 6  # running mean and variance of the stem's batch norm
    assert exported <= params + bn_buffers < params + head_weights
    assert sum(n.op_type == "Gemm" or n.op_type == "MatMul" for n in graph.node) == 1
    images = data.tensors[0][:8]
    session = ort_session(path)
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model.eval()(images).numpy(), atol=1e-5)
