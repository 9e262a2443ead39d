"""`code` reward: run the completion's last code block plus the example's `tests` in a sandboxed subprocess;
1.0 when the program finishes the tests, else 0.0.

Layers of the sandbox, each used where the OS allows it (`sandbox_info()` says which are on):
- a fresh temp dir as cwd, HOME and TMPDIR, removed afterwards; a minimal environment whose proxy
  variables point to a closed port;
- a wall-clock timeout after which the whole process group is SIGKILLed; the child starts a new session;
- `resource` limits: CPU seconds, address space (memory bombs raise MemoryError), file size, open files,
  no core dumps, and a number of processes (RLIMIT_NPROC, counted per real uid);
- when run as root (where RLIMIT_NPROC is not enforced and files are writable everywhere) the program
  runs as `nobody`, and in new network and pid namespaces: no network at all (not even loopback), and
  every process of the program dies with it (a pid namespace dies with its pid 1), so a fork bomb is
  bounded by RLIMIT_NPROC and cleaned up at the timeout; as a normal user the same namespaces are
  tried through an unprivileged user namespace;
- in a new mount namespace (where the OS allows it: as root, or through an unprivileged user namespace),
  private tmpfs mounts (nosuid, nodev, `file_size_mb` each) cover /tmp, /var/tmp and /dev/shm, the temp
  dir is bound back to its own path, and every other mount is remounted read-only: no process of the
  program, child processes and ctypes included, can leave a file anywhere outside (the tmpfs mounts die
  with the namespace);
- inside the interpreter, an audit hook (PEP 578) refuses file writes outside the temp dir and socket
  connections. It covers Python code only, not child processes, and ctypes can get past it: it is a
  second layer, not the wall.
`sandbox_info().walls` names the walls that are up. What stays open: with no namespaces available
(unprivileged user namespaces disabled) a child process of the program can still reach the network, and as
a normal user it can write wherever that user can; without a mount namespace a child process can write to
world-writable directories such as /tmp even as `nobody`. CPU time is limited per process, not in total
(a pid namespace bounds the processes, the wall-clock timeout the time).

A program passes only if it runs to the end of the tests: the runner prints a per-run nonce after them,
so `sys.exit(0)` or `os._exit(0)` before the tests does not pass.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxLimits:
  timeout_s: float = 5.0      # wall clock for the whole run, start-up included
  cpu_s: int = 5              # RLIMIT_CPU per process
  memory_mb: int = 1024       # RLIMIT_AS per process
  max_processes: int = 16     # RLIMIT_NPROC above what the sandbox uid already runs
  file_size_mb: int = 16      # RLIMIT_FSIZE: largest file (stdout included)
  max_open_files: int = 64    # RLIMIT_NOFILE


@dataclasses.dataclass(frozen=True)
class SandboxInfo:
  python: str                 # interpreter the program runs under
  unshare_flags: int          # namespaces entered (CLONE_* bits)
  run_as: tuple[int, int] | None  # (uid, gid) dropped to when started as root

  @property
  def network_isolated(self) -> bool:
    return bool(self.unshare_flags & CLONE_NEWNET)

  @property
  def filesystem_isolated(self) -> bool:
    """Own mount namespace: private tmpfs over /tmp, /var/tmp and /dev/shm, every other mount read-only."""
    return bool(self.unshare_flags & CLONE_NEWNS)

  @property
  def walls(self) -> dict[str, bool]:
    """Which walls are up, by name (what a run's log and `sandbox_info()` users read)."""
    return {"run_as_unprivileged_user": self.run_as is not None or os.geteuid() != 0,
            "process_limit": self.nproc_enforced, "network_namespace": self.network_isolated,
            "pid_namespace": bool(self.unshare_flags & CLONE_NEWPID), "filesystem": self.filesystem_isolated}

  @property
  def nproc_enforced(self) -> bool:
    return os.geteuid() != 0 or self.run_as is not None


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  completed: bool             # ran to the end (exit 0 and the nonce printed last)
  returncode: int | None
  timed_out: bool
  stdout: str
  stderr: str


# Runs as root (or the caller), single-threaded: enter namespaces, fork pid 1 of the new pid namespace,
# which drops privileges, sets limits and execs the runner. Exit 125 means the sandbox itself failed.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
# RLIMIT_NPROC counts all tasks of a real uid: count the sandbox uid's before entering a user namespace,
# where unmapped uids would all read as 65534.
uid, tasks = str(cfg["run_as"][0] if cfg["run_as"] else os.getuid()), 0
for p in os.listdir("/proc"):
  if p.isdigit():
    try:
      with open("/proc/%s/status" % p) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
      if fields["Uid"].split()[0] == uid:
        tasks += int(fields["Threads"])
    except (OSError, KeyError, ValueError):
      pass
flags = cfg["unshare_flags"]
if flags:
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.unshare(flags) != 0:
    os.write(2, b"sandbox: unshare failed, errno %d\n" % ctypes.get_errno()); os._exit(125)
  if flags & 0x10000000:  # CLONE_NEWUSER: map our own ids, else files cannot be created.
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (os.getuid(), os.getuid())),
                       ("gid_map", "%d %d 1" % (os.getgid(), os.getgid()))):
      with open("/proc/self/" + name, "w") as f:
        f.write(text)
if flags & 0x00020000:  # CLONE_NEWNS: private tmpfs over the shared scratch dirs, everything else read-only.
  MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
  def mount(src, target, fstype, mflags, data):
    if libc.mount(src, target.encode(), fstype, mflags, data) != 0:
      os.write(2, b"sandbox: mount %s failed, errno %d\n" % (target.encode(), ctypes.get_errno())); os._exit(125)
  mount(b"none", "/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount propagates back out
  workdir, scratch = cfg["workdir"], [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
  for d in scratch:
    mount(b"tmpfs", d, b"tmpfs", 2 | 4, b"mode=1777,size=%dm" % cfg["tmpfs_mb"])  # nosuid, nodev
  # The cwd still holds the sandbox dir under the covered /tmp: bind it back to its own path.
  os.makedirs(workdir, exist_ok=True)
  mount(b".", workdir, None, MS_BIND, None)
  os.chdir(workdir)
  with open("/proc/self/mountinfo") as f:
    points = [line.split()[4].encode().decode("unicode_escape") for line in f]
  # Keep the locked per-mount flags (statvfs f_flag: nosuid 2, nodev 4, noexec 8, noatime 1024,
  # nodiratime 2048, relatime 4096 -> MS_RELATIME), else a remount in a user namespace is refused.
  for point in dict.fromkeys(points):
    if point in scratch or point == workdir:
      continue
    try:
      kept = os.statvfs(point).f_flag
    except OSError:
      continue
    mflags = MS_REMOUNT | MS_BIND | MS_RDONLY | (kept & (2 | 4 | 8 | 1024 | 2048)) | ((kept & 4096) and 1 << 21)
    if libc.mount(None, point.encode(), None, mflags, None) != 0 and point == "/":
      os.write(2, b"sandbox: read-only / failed, errno %d\n" % ctypes.get_errno()); os._exit(125)
pid = os.fork()
if pid == 0:
  try:
    if cfg["run_as"]:
      os.setgroups([]); os.setgid(cfg["run_as"][1]); os.setuid(cfg["run_as"][0])
    limits = dict(cfg["limits"], RLIMIT_NPROC=tasks + cfg["max_processes"])
    for name, value in limits.items():
      resource.setrlimit(getattr(resource, name), (value, value))
    os.execve(cfg["python"], [cfg["python"], "-I", "-B", "-c", cfg["runner"]], cfg["env"])
  except BaseException as e:
    os.write(2, ("sandbox: %r\n" % (e,)).encode()); os._exit(125)
_, status = os.waitpid(pid, 0)
os._exit(os.waitstatus_to_exitcode(status) % 256)
"""

# Runs as the sandbox user in the temp dir: read the nonce, install the audit hook, run program.py,
# print the nonce.
_RUNNER = r"""
import os, sys
def _guard(root):
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
  realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
  def inside(path):
    if isinstance(path, int):
      return True
    p = realpath(fsdecode(path))
    return p == root or p.startswith(root + sep) or p == "/dev/null"
  path_events = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.chmod": 0, "os.chown": 0, "os.truncate": 0,
                 "os.utime": 0, "shutil.rmtree": 0, "os.rename": 1, "os.link": 1, "os.symlink": 1,
                 "shutil.copyfile": 1}
  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      if ((mode and any(c in mode for c in "wax+")) or (flags or 0) & write_flags) and not inside(path):
        raise PermissionError("sandbox: writing outside the sandbox dir: %r" % (path,))
    elif event in path_events:
      if not inside(args[path_events[event]]):
        raise PermissionError("sandbox: %s outside the sandbox dir: %r" % (event, args[path_events[event]]))
    elif event.startswith("socket.") and event != "socket.__new__":
      raise PermissionError("sandbox: no network (%s)" % event)
  sys.addaudithook(hook)
def _main():
  nonce = sys.stdin.readline().strip()
  with open("program.py", encoding="utf-8") as f:
    code = compile(f.read(), "program.py", "exec")
  _guard(os.path.realpath(os.getcwd()))
  exec(code, {"__name__": "solution", "__builtins__": __builtins__})
  sys.stdout.flush()
  os.write(1, ("\n" + nonce + "\n").encode())
_main()
"""


def _run(program: str, limits: SandboxLimits, info: SandboxInfo) -> SandboxResult:
  tmp = tempfile.mkdtemp(prefix="jaxpost_sandbox_")
  try:
    with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
      f.write(program)
    if info.run_as:
      os.chown(tmp, *info.run_as)
      os.chown(os.path.join(tmp, "program.py"), *info.run_as)
    dead_proxy = "http://127.0.0.1:9"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "no_proxy": "", "NO_PROXY": "",
           **{k: dead_proxy for k in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "HTTP_PROXY",
                                      "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY")}}
    mb = 1024 * 1024
    cfg = {"unshare_flags": info.unshare_flags, "run_as": info.run_as, "python": info.python, "runner": _RUNNER,
           "env": env, "workdir": os.path.realpath(tmp), "tmpfs_mb": limits.file_size_mb, "max_processes": limits.max_processes,
           "limits": {"RLIMIT_CPU": int(limits.cpu_s), "RLIMIT_AS": limits.memory_mb * mb,
                      "RLIMIT_FSIZE": limits.file_size_mb * mb, "RLIMIT_NOFILE": limits.max_open_files,
                      "RLIMIT_CORE": 0}}
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(cfg)], cwd=tmp,
                              env=env, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)
      timed_out = False
      try:
        try:
          proc.stdin.write((nonce + "\n").encode())
          proc.stdin.close()
        except BrokenPipeError:
          pass
        returncode = proc.wait(timeout=limits.timeout_s)
      except subprocess.TimeoutExpired:
        timed_out, returncode = True, None
      finally:
        try:  # Also after a normal exit: background children left in the group go too.
          os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
          pass
        proc.wait()
      stdout, stderr = (_tail(f) for f in (out, err))
    completed = returncode == 0 and stdout.rstrip("\n").rsplit("\n", 1)[-1] == nonce
    return SandboxResult(completed, returncode, timed_out, stdout, stderr)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _tail(f, limit: int = 65536) -> str:
  f.seek(0, os.SEEK_END)
  f.seek(max(0, f.tell() - limit))
  return f.read().decode("utf-8", "replace")


@functools.cache
def sandbox_info() -> SandboxInfo:
  """The strongest sandbox that works here, found once by running `pass` under each candidate."""
  root = os.geteuid() == 0
  run_as_options: list = [None]
  if root:
    import pwd
    try:
      nobody = pwd.getpwnam("nobody")
      run_as_options.insert(0, (nobody.pw_uid, nobody.pw_gid))
    except KeyError:
      pass
  ns = [CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWPID, 0] if root else [
      CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID,
      CLONE_NEWUSER | CLONE_NEWNET, 0]
  # `nobody` may not reach the running interpreter (e.g. under /root): try a system python too.
  pythons = list(dict.fromkeys(p for p in (sys.executable, "/usr/bin/python3", shutil.which("python3")) if p))
  errors = []
  for run_as in run_as_options:
    for flags in ns:
      for python in pythons:
        info = SandboxInfo(python, flags, run_as)
        result = _run("pass", SandboxLimits(timeout_s=20.0), info)
        if result.completed:
          return info
        errors.append(f"{info}: rc={result.returncode} {result.stderr.strip()[-300:]}")
  raise RuntimeError("no working sandbox configuration:\n" + "\n".join(errors))


def run_python(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
  """Runs Python source `program` in the sandbox (see the module docstring) and reports how it ended."""
  return _run(program, limits, sandbox_info())


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
  """The last fenced code block tagged python/py (else the last fenced block of any tag), else the text."""
  blocks = _FENCE.findall(completion)
  python = [code for tag, code in blocks if tag.lower() in ("python", "py", "python3")]
  if python or blocks:
    return (python or [code for _, code in blocks])[-1]
  return completion


def tests_source(tests) -> str:
  """example['tests']: Python source (str) or a list of statements such as `assert f(1) == 2`."""
  if isinstance(tests, str):
    return tests
  if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
    return "\n".join(tests)
  raise TypeError(f"example['tests'] must be a str or a list of str, got {type(tests).__name__}")


def make_code_reward(limits: SandboxLimits = SandboxLimits()):
  """fn(completion, example) -> 1.0 if the completion's code passes example['tests'] in the sandbox."""
  def code_reward(completion: str, example: dict) -> float:
    program = extract_code(completion) + "\n\n# --- tests ---\n" + tests_source(example["tests"]) + "\n"
    return 1.0 if run_python(program, limits).completed else 0.0
  return code_reward


code = make_code_reward()
