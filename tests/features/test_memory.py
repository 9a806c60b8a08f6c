"""Memory projection (exact, chunked, top-k), noise injection and memory files."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.release_fixtures import write_malicious_memory
from topa_plugin.features.memory import (
    coverage_threshold,
    load_memory,
    nearest_rows,
    project_to_memory,
    save_memory,
    top_k_error,
)
from topa_plugin.features.store import FeatureError
from topa_plugin.features.transforms import l2_normalize, noise_injection
from topa_plugin.release.safeload import UnsafePickleError


def direct(frames, memory, temperature=100.0):
    """The formula of docs/method.md section 2, written out in one line."""
    return l2_normalize(torch.softmax(temperature * frames @ memory.T, dim=-1) @ memory)


@pytest.fixture
def memory():
    return l2_normalize(torch.randn(777, 32, generator=torch.Generator().manual_seed(0)))


@pytest.fixture
def frames():
    f = l2_normalize(torch.randn(3, 10, 32, generator=torch.Generator().manual_seed(1)))
    f[1, 6:] = 0  # padded frames
    return f


def clustered(n_clusters, per_cluster, dim, spread, seed):
    """Unit rows around random centres; ``spread`` is the norm of each row's offset."""
    g = torch.Generator().manual_seed(seed)
    centres = l2_normalize(torch.randn(n_clusters, dim, generator=g))
    rows = centres.repeat_interleave(per_cluster, 0)
    return centres, l2_normalize(rows + spread * l2_normalize(torch.randn(rows.shape, generator=g)))


def test_exact_equals_direct_formula_including_zero_rows(frames, memory):
    got = project_to_memory(frames, memory)
    assert got.shape == frames.shape
    torch.testing.assert_close(got, direct(frames, memory), rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1, 7], l2_normalize(memory.mean(0)), rtol=0, atol=1e-5)
    torch.testing.assert_close(project_to_memory(frames, memory, temperature=3.0), direct(frames, memory, 3.0),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("budget", [1, 7, 100, 10_000])
def test_tiny_chunk_budget_equals_unchunked(frames, memory, budget):
    unchunked = project_to_memory(frames, memory, max_chunk_elems=10**9)
    torch.testing.assert_close(project_to_memory(frames, memory, max_chunk_elems=budget), unchunked,
                               rtol=0, atol=1e-5)


def test_fp16_memory_is_widened_chunk_by_chunk(frames, memory):
    half = memory.half()
    torch.testing.assert_close(project_to_memory(frames, half, max_chunk_elems=500), direct(frames, half.float()),
                               rtol=0, atol=1e-5)


def test_top_k_agrees_with_exact_on_clustered_data():
    centres, memory = clustered(200, 40, 768, spread=0.5, seed=0)
    offsets = l2_normalize(torch.randn(25, 768, generator=torch.Generator().manual_seed(1)))
    queries = l2_normalize(centres[:25] + 0.5 * offsets)
    report = top_k_error(queries, memory, top_k=64, max_chunk_elems=20_000)
    assert report["min_cosine"] >= 0.999
    # the measure is not vacuous: a single neighbour is measurably worse on the same data
    assert top_k_error(queries, memory, top_k=1)["min_cosine"] < report["min_cosine"]


def test_top_k_edge_cases(frames, memory):
    exact = project_to_memory(frames, memory)
    torch.testing.assert_close(project_to_memory(frames, memory, top_k=len(memory)), exact)
    approx = project_to_memory(frames, memory, top_k=3, max_chunk_elems=64)
    torch.testing.assert_close(approx, project_to_memory(frames, memory, top_k=3, max_chunk_elems=10**9),
                               rtol=0, atol=1e-5)  # the running top-k over chunks is the global top-k
    torch.testing.assert_close(approx[1, 6:], exact[1, 6:], rtol=0, atol=1e-5)  # zero rows stay exact
    assert (approx[0] * exact[0]).sum(-1).min() < 0.9999  # three neighbours are not the whole softmax
    with pytest.raises(ValueError, match="top_k"):
        project_to_memory(frames, memory, top_k=0)
    with pytest.raises(ValueError, match="memory"):
        project_to_memory(frames, memory[:, :5])


def test_noise_injection_follows_the_release_recipe():
    x = torch.randn(4, 768) * 3
    assert noise_injection(x, 0.0) is x
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = noise_injection(x, 0.01, generator=g1)
    n1, n2 = torch.randn(x.shape, generator=g2), torch.randn(x.shape, generator=g2)
    expected = l2_normalize(l2_normalize(x) + 0.1 * n1 + 0.1 * l2_normalize(n2))
    torch.testing.assert_close(got, expected)
    assert torch.allclose(got.norm(dim=-1), torch.ones(4))
    # variance is per coordinate: the noise norm grows with the dimension
    many = noise_injection(x.repeat(64, 1), 0.01, generator=g1)
    cosine = (many * l2_normalize(x.repeat(64, 1))).sum(-1).mean()
    assert cosine == pytest.approx((1 + 0.01 * 768 + 0.01) ** -0.5, abs=0.02)
    with pytest.raises(ValueError, match="variance"):
        noise_injection(x, -1.0)


def test_memory_round_trip_is_fp16(tmp_path, memory):
    path = save_memory(memory, tmp_path / "m" / "memory.safetensors")
    loaded = load_memory(path)
    assert loaded.dtype == torch.float16 and torch.equal(loaded, memory.half())
    assert load_memory(path, dtype=torch.float32).dtype == torch.float32
    assert not list(path.parent.glob("*.tmp"))


def test_release_memory_pickle_loads_through_the_restricted_loader(tmp_path, memory):
    with open(tmp_path / "memory.pkl", "wb") as f:
        pickle.dump(memory.half(), f)
    assert torch.equal(load_memory(tmp_path / "memory.pkl"), memory.half())
    marker = tmp_path / "ran"
    write_malicious_memory(tmp_path / "evil.pkl", marker)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        load_memory(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_bad_memory_files_are_named(tmp_path):
    save_file({"rows": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(FeatureError, match=r"wrong\.safetensors.*'memory'"):
        load_memory(tmp_path / "wrong.safetensors")
    save_file({"memory": torch.tensor([[1.0, float("nan")]])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match=r"nan\.safetensors.*NaN"):
        load_memory(tmp_path / "nan.safetensors")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match=r"list\.pkl.*list"):
        load_memory(tmp_path / "list.pkl")
    with pytest.raises(FileNotFoundError, match="absent"):
        load_memory(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("chunk", [16, 200, 1 << 20])
def test_nearest_rows_are_the_top_cosines_whatever_the_chunking(memory, frames, chunk):
    flat = frames[0]
    cosines, rows = nearest_rows(flat, memory.half(), 4, max_chunk_elems=chunk)
    expected = (flat @ memory.half().float().T).topk(4, dim=1)
    assert torch.equal(rows, expected.indices)
    assert torch.allclose(cosines, expected.values, atol=1e-6)


def test_coverage_threshold_is_the_memorys_low_nearest_neighbour_percentile(memory):
    nearest = (memory @ memory.T).fill_diagonal_(-2).max(dim=1).values
    assert coverage_threshold(memory, sample=len(memory)) == pytest.approx(float(torch.quantile(nearest, 0.05)), abs=1e-6)
    sampled = coverage_threshold(memory)  # 256 rows drawn: close to the whole memory's, and seeded
    assert sampled == coverage_threshold(memory) and abs(sampled - float(torch.quantile(nearest, 0.05))) < 0.03
    with pytest.raises(ValueError, match="at least 2 memory rows"):
        coverage_threshold(memory[:1])
