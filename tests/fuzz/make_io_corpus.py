"""Writes the seed corpora of the io/ fuzz targets (safetensors, pickle, torch_bin) from real torch and
safetensors output. Run once with the project venv when the formats change: .venv/bin/python tests/fuzz/make_io_corpus.py"""
import io
import pathlib
import zipfile

import torch
from safetensors.torch import save

HERE = pathlib.Path(__file__).resolve().parent / "corpus"


def state_dicts():
    torch.manual_seed(0)
    base = torch.randn(3, 4)
    yield "floats", {"w": base, "b": torch.zeros(4, dtype=torch.float16), "e": torch.ones(2, dtype=torch.bfloat16)}
    yield "views", {"t": base.t(), "row": base[1], "scalar": torch.tensor(2.0), "empty": torch.zeros(0, 3)}
    yield "ints", {"i": torch.arange(4), "m": torch.tensor([True, False]), "u": torch.tensor([1, 2], dtype=torch.uint8)}
    yield "param", {"p": torch.nn.Parameter(torch.randn(2, 2))}
    yield "module", torch.nn.Linear(3, 2).state_dict()  # an OrderedDict with _metadata (BUILD)


def torch_zip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def main():
    for name in ("safetensors", "pickle", "torch_bin"):
        (HERE / name).mkdir(parents=True, exist_ok=True)
    for name, sd in state_dicts():
        plain = {k: v.detach().contiguous() for k, v in sd.items()}
        (HERE / "safetensors" / f"{name}.safetensors").write_bytes(save(plain, metadata={"format": "pt"}))
        blob = torch_zip(sd)
        (HERE / "torch_bin" / f"{name}.bin").write_bytes(blob)
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            (HERE / "pickle" / f"{name}.pkl").write_bytes(z.read(pkl))
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(torch_zip(dict(state_dicts())["floats"]))) as zin, \
            zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as out:
                out.write(zin.read(info.filename))
    (HERE / "torch_bin" / "deflated_zip64.bin").write_bytes(deflated.getvalue())


if __name__ == "__main__":
    main()
