"""Device side: unpack the course data and MiniLM (sent as fp16 + xz to fit the 64 MiB transfer) as an fp32 checkpoint."""
import lzma, shutil, sys, tarfile
from pathlib import Path
from safetensors.torch import load, save_file
src, data, dst = Path(".gpu"), Path(sys.argv[1]), Path(sys.argv[2])
data.mkdir(parents=True, exist_ok=True)
with tarfile.open(src / "data.tar.xz") as tar:
    tar.extractall(data)
dst.mkdir(parents=True, exist_ok=True)
for f in (src / "minilm").iterdir():
    if not f.name.endswith(".xz"):
        shutil.copy(f, dst / f.name)
state = load(lzma.decompress((src / "minilm/model.fp16.safetensors.xz").read_bytes()))
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, dst / "model.safetensors")
print("data:", sorted(p.name for p in data.iterdir()), "checkpoint:", sorted(p.name for p in dst.iterdir()))
