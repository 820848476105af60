"""The model smoke lane: every notebook, top to bottom, on a tiny random-weight checkpoint of another family (Gemma 3:
(1 + w) norms, q/k norms, sliding-window and global layers, head_dim != hidden / heads) saved here at test time, with
small parameters. Outputs are not compared (random weights teach nothing); a cell that raises fails the lane.

What it proves: switching MODEL_ID to a model the course was not tuned on runs every lesson to its end, with the
default model's own facts skipped and its claims reported (held / not held) instead of asserted."""
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# Every notebook with a model switch (one without, such as the kernel lesson, would run here exactly as in the main lane).
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if "MODEL_ID = " in p.read_text())
# Smaller values for the parameters a notebook defines (a name it does not define is left out).
SMALL = {
    "EVAL_WINDOWS, WINDOW": "2, 64", "GENERATED": "16", "CLOZE_ITEMS": "2", "RUN_LM_EVAL": "False",
    "CAPTURE_WINDOWS, WINDOW": "1, 64", "SCAN_WINDOWS": "1", "DEV_WINDOWS": "2", "CALIB_WINDOWS, CALIB_LEN": "4, 64",
    "HEAT_WINDOWS, HEAT_LEN": "2, 64", "SALIENT_WINDOWS": "2", "N_GRID": "4", "SWEEP_WINDOWS, SWEEP_LEN": "2, 64",
    "ALPHAS": "(0.0, 0.5)", "GEMM_SIZE": "256", "KV_WINDOWS": "2", "SHAPE": "(128, 256)", "BATCHES": "(1, 2)",
    "POINT_S": "0.01", "ROTATE_BYTES": "2**20", "PROMPT, NEW_TOKENS": "8, 4",
    "COMPILE_FORMATS": "()",
}
ASSIGNMENT = re.compile(r"^(?P<names>[A-Z_][A-Z0-9_, ]*?)\s*=\s*(?P<value>.*?)(?P<comment>\s+#.*)?$")


def shrink(source: str, model_dir: str) -> str:
    """The Parameters cell with MODEL_ID set to the tiny checkpoint and every SMALL parameter it defines made small."""
    lines = []
    for line in source.splitlines():
        m = ASSIGNMENT.match(line)
        names = m and m["names"].strip()
        if names == "MODEL_ID":
            line = f"MODEL_ID = {model_dir!r}"
        elif names in SMALL:
            line = f"{names} = {SMALL[names]}"
        lines.append(line)
    return "\n".join(lines)


def test_shrink_rewrites_only_what_it_knows():
    cell = 'MODEL_ID = None  # offline\nEVAL_WINDOWS, WINDOW = 8, 512  # test set\nGROUP = 64  # kept'
    assert shrink(cell, "/m") == "MODEL_ID = '/m'\nEVAL_WINDOWS, WINDOW = 2, 64\nGROUP = 64  # kept"


# The family of the lane's tiny model: QHT_SMOKE_FAMILY=llama|qwen3|gemma3|phi3|opt (the test command runs gemma3,
# the family furthest from the default model; the others are for trying the course as a new user would).
FAMILY = os.environ.get("QHT_SMOKE_FAMILY", "gemma3")


def tiny_config(family: str, tokenizer):
    """A 2-layer config of `family` with widths of 256 and 512 (k-quants' 256-weight rows fit) and the offline vocabulary."""
    import transformers as T

    common = dict(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id or 0,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "gemma3":  # (1 + w) norms, q/k norms, sliding and global layers, head_dim 48, not 256 / 4
        return T.Gemma3TextConfig(**common, intermediate_size=512, num_key_value_heads=2, head_dim=48, sliding_window=16,
                                  layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=48)
    if family == "llama":  # grouped-query attention
        return T.LlamaConfig(**common, intermediate_size=512, num_key_value_heads=2)
    if family == "qwen3":  # q/k norms, head_dim 32, not 256 / 4
        return T.Qwen3Config(**common, intermediate_size=512, num_key_value_heads=2, head_dim=32)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return T.Phi3Config(**common, intermediate_size=512, num_key_value_heads=4)
    if family == "opt":  # LayerNorm with bias, biased linears, an ungated ReLU MLP, learned positions
        return T.OPTConfig(**common, ffn_dim=512, word_embed_proj_dim=256, do_layer_norm_before=True)
    raise ValueError(f"QHT_SMOKE_FAMILY={family!r}: choose one of llama, qwen3, gemma3, phi3, opt")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer model of FAMILY with random weights and the offline model's tokenizer, saved as a checkpoint;
    a course cache of its own (results of the lane never mix with the default model's), sharing the converted models."""
    from transformers import AutoModelForCausalLM

    from lessons_lib import models

    _, tokenizer = models.load_model()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(FAMILY, tokenizer))
    folder = tmp_path_factory.mktemp(f"tiny-{FAMILY}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), models.cache_sharing_checkpoints(tmp_path_factory.mktemp("smoke-cache"))


@pytest.fixture(scope="module")
def kernel(tiny_model):
    """One kernel for the whole lane, started with the lane's cache: each notebook's imports (torch, transformers, the
    toolkits: about 10 s a kernel on 2 cores) are paid once; every notebook starts from an empty namespace."""
    from jupyter_client.manager import KernelManager

    _, cache = tiny_model
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT / "notebooks"), env={**os.environ, "QHT_CACHE": str(cache), "TQDM_DISABLE": "1"})
    yield km
    km.shutdown_kernel(now=True)


FRESH = "%reset -f\nimport gc, matplotlib.pyplot\nmatplotlib.pyplot.close('all')\ngc.collect()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_runs_on_a_tiny_model_of_another_family(path, tiny_model, kernel):
    from nbclient import NotebookClient

    model_dir, _ = tiny_model
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# Parameters"))
    params.source = shrink(params.source, model_dir)
    for cell in nb.cells:
        cell.outputs = [] if cell.cell_type == "code" else getattr(cell, "outputs", None)
    nb.cells.insert(0, nbformat.v4.new_code_cell(FRESH))  # the previous notebook's names and figures are gone
    start = time.perf_counter()
    NotebookClient(nb, km=kernel, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
    table = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("claims.table()")]
    print(f"{path.stem}: {time.perf_counter() - start:.0f} s on the tiny {FAMILY}"
          + (f", {len(table)} claims table" if table else ""))
