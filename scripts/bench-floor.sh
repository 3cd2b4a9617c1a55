#!/usr/bin/env bash
# The kernel's own CPU cost per GB of what any broker on this machine must do, measured
# without a broker: what the broker CPU targets of `bench-compare.sh` are up against.
#   receive  1 GiB received over a loopback TCP connection (the receiver's CPU);
#   write    1 GiB written into the data directory's page cache (dd, no sync);
#   sendfile 1 GiB sent from a file in the page cache over loopback with sendfile
#            (the sender's CPU: over loopback it also runs the receiving side's TCP work);
#   copy     the same with read + send, as a broker without sendfile would.
# produce >= receive + write; consume >= sendfile (per GB, before any broker work).
#
#   scripts/bench-floor.sh [ROUNDS]      default 2; BENCH_DIR: the data file system (/tmp)
# Measures, asserts nothing.
set -euo pipefail
ROUNDS=${1:-2}
dir="$(mktemp -d "${BENCH_DIR:-/tmp}/strata-floor.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
for _ in $(seq "$ROUNDS"); do
  python3 - "$dir" <<'PY'
import os, socket, subprocess, sys, time
N, GB = 1 << 30, 1e9
d = sys.argv[1]
def per_gb(t0, t1):
    return (t1.user - t0.user + t1.system - t0.system) / (N / GB)
def pair():
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    return srv, srv.getsockname()[1]
def sink(port):
    s = socket.create_connection(("127.0.0.1", port)); mv = memoryview(bytearray(1 << 20))
    while s.recv_into(mv): pass
    os._exit(0)
# receive
srv, port = pair()
pid = os.fork()
if pid == 0:
    srv.close(); s = socket.create_connection(("127.0.0.1", port)); b = b"x" * (1 << 20)
    for _ in range(N >> 20): s.sendall(b)
    os._exit(0)
c, _ = srv.accept(); mv = memoryview(bytearray(1 << 20)); t0 = os.times()
while c.recv_into(mv): pass
receive = per_gb(t0, os.times()); os.waitpid(pid, 0); c.close(); srv.close()
# write
path = os.path.join(d, "f"); t0 = os.times()
with open(path, "wb", buffering=0) as f:
    b = b"\0" * (1 << 20)
    for _ in range(N >> 20): f.write(b)
write = per_gb(t0, os.times())
# sendfile and copy, from the file just written (in the page cache)
out = {}
for mode in ("sendfile", "copy"):
    srv, port = pair(); pid = os.fork()
    if pid == 0: srv.close(); sink(port)
    c, _ = srv.accept(); fd = os.open(path, os.O_RDONLY); buf = bytearray(1 << 20); off = 0; t0 = os.times()
    while off < N:
        if mode == "sendfile":
            off += os.sendfile(c.fileno(), fd, off, N - off)
        else:
            n = os.preadv(fd, [buf], off); c.sendall(memoryview(buf)[:n]); off += n
    out[mode] = per_gb(t0, os.times()); c.close(); os.close(fd); os.waitpid(pid, 0); srv.close()
os.unlink(path)
print(f"CPU s per GB: receive {receive:.2f}, write {write:.2f} (produce floor {receive + write:.2f}); "
      f"sendfile {out['sendfile']:.2f}, copy {out['copy']:.2f} (consume floor {out['sendfile']:.2f})")
PY
done
