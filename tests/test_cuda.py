"""CUDA paths of the stages that a cluster runs on GPUs, against the same run on CPU: tiny
random models of every VLM family through extract_vectors (fp32 and bf16) and their captions
through eval_captions; the batched permutation nulls. Skipped without a GPU (CI has none);
run on a GPU machine."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from src.data.vectors import iter_chunks
from src.eval import eval_captions
from src.extract import extract_vectors
from src.metrics.similarity import _linear_tests, rbf_cka_permutation_test
from tests.conftest import write_noise_images
from tests.tiny_vlms import BUILDERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    BUILDERS[request.param](root / "model")
    write_noise_images(root / "images" / "s0", 6)
    return request.param, root


def extract(root, name: str, device: str, dtype: str) -> dict[str, torch.Tensor]:
    out = root / f"vec_{device}_{dtype}"
    assert extract_vectors.main([
        "--root", str(root / "images"), "--out_dir", str(out), "--models", name,
        "--model_id", f"{name}={root / 'model'}", "--device", device, "--dtype", dtype,
        "--batch_size", "4", "--num_workers", "0", "--no_progress",
    ]) == 0  # fmt: skip
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    got = {}
    for kind in ("pre", "post"):
        for _, chunk in iter_chunks(out / name / "s0", kind):
            assert chunk.vectors.dtype == want  # stored in the compute dtype (--save_dtype same)
            for key, v in chunk.by_key().items():
                got[f"{kind}/{key}"] = v.float()
    return got


def test_cuda_vectors_match_cpu(family):
    name, root = family
    cpu = extract(root, name, "cpu", "fp32")
    gpu = extract(root, name, "cuda", "fp32")
    assert cpu.keys() == gpu.keys() and len(cpu) == 12
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-3, atol=1e-3, msg=k)
    half = extract(root, name, "cuda", "bf16")
    for k in cpu:  # bf16 keeps ~3 significant digits: compare directions, not values
        cos = torch.nn.functional.cosine_similarity(half[k], cpu[k], dim=-1)
        assert cos.min() > 0.98, (k, float(cos.min()))


def test_cuda_captions_match_cpu(family):
    name, root = family
    cpu_vec = root / "vec_cpu_fp32"
    if not cpu_vec.exists():
        extract(root, name, "cpu", "fp32")
    tables = {}
    for device in ("cpu", "cuda"):
        out = root / f"caps_{device}"
        assert eval_captions.main([
            "--vec_dir", str(cpu_vec / name), "--image_dir", str(root / "images"),
            "--embed_model", name, "--vlm_id", str(root / "model"), "--out_dir", str(out),
            "--max_new_tokens", "6", "--device", device, "--dtype", "fp32", "--no_progress",
        ]) == 0  # fmt: skip
        tables[device] = pd.read_csv(out / "s0.csv", keep_default_na=False)
    # Greedy decoding of the same stored E_post: the same captions on either device.
    assert tables["cuda"].caption_post.tolist() == tables["cpu"].caption_post.tolist()


@pytest.mark.parametrize("gram", [True, False])
def test_cuda_permutation_nulls_match_cpu(gram):
    # Off CPU the nulls run their permutations in batches (whole-matrix Gram gathers, one GEMM
    # per batch in feature space) instead of CPU's one at a time in cache-sized blocks.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, dtype=torch.float64, generator=g)
    y = x[:, :8] @ torch.randn(8, 30, dtype=torch.float64, generator=g)
    y = y + torch.randn(300, 30, dtype=torch.float64, generator=g)
    cpu = _linear_tests(x, y, (False, True), 50, 1, torch.float64, gram=gram)
    gpu = _linear_tests(x.cuda(), y.cuda(), (False, True), 50, 1, torch.float64, gram=gram)
    for a, b in zip(cpu, gpu, strict=True):
        assert b.observed == pytest.approx(a.observed, rel=1e-10)
        torch.testing.assert_close(b.null, a.null, rtol=0, atol=1e-6)  # float32 Gram form
    for unbiased in (False, True):
        rbf_cpu = rbf_cka_permutation_test(x, y, unbiased=unbiased, n_perm=50)
        rbf_gpu = rbf_cka_permutation_test(x.cuda(), y.cuda(), unbiased=unbiased, n_perm=50)
        torch.testing.assert_close(rbf_gpu.null, rbf_cpu.null, rtol=0, atol=1e-6)
