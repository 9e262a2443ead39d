"""The `code` reward's sandbox: honest programs pass, hostile ones score 0 within the time limit, and the
test process survives. We run as root here, where the sandbox runs programs as `nobody` in new network
and pid namespaces; tests of a layer the machine does not offer are skipped with the reason."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from jaxpost import rewards
from jaxpost.rewards import code as code_lib

LIMITS = code_lib.SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512, max_processes=8)
reward = code_lib.make_code_reward(LIMITS)


def _completion(code: str) -> str:
  return f"Here is my solution:\n```python\n{code}\n```\nDone."


def _timed(code, tests="assert True"):
  start = time.monotonic()
  score = reward(_completion(code), {"tests": tests})
  return score, time.monotonic() - start


def test_sandbox_configuration_is_found():
  info = code_lib.sandbox_info()
  if os.geteuid() == 0:
    assert info.run_as is not None, "as root the program must not run as root (RLIMIT_NPROC is not enforced)"
  print(info)


def test_passing_and_failing_solutions():
  solution = "def add(a, b):\n    return a + b"
  assert reward(_completion(solution), {"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0"}) == 1.0
  assert reward(_completion(solution), {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}) == 1.0
  assert reward(_completion(solution), {"tests": ["assert add(1, 2) == 4"]}) == 0.0
  assert reward(_completion("def add(a, b) return a + b"), {"tests": "assert add(1, 2) == 3"}) == 0.0  # syntax


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exiting_before_the_tests_does_not_pass(exit_call):
  """The runner prints its nonce only after the tests, so skipping them by exiting with status 0 fails."""
  assert _timed(exit_call, "assert False")[0] == 0.0


def test_extract_code_takes_the_last_python_block():
  text = "```python\nx = 1\n```\nor better\n```py\nx = 2\n```\n```\nnot python\n```"
  assert code_lib.extract_code(text) == "x = 2\n"
  assert code_lib.extract_code("```\ny = 3\n```") == "y = 3\n"
  assert code_lib.extract_code("z = 4") == "z = 4"


def test_infinite_loop_times_out():
  score, elapsed = _timed("while True:\n    pass")
  assert score == 0.0 and elapsed < LIMITS.timeout_s + 2.0


def test_memory_bomb_is_refused():
  """RLIMIT_AS 512 MiB: both one huge and many growing allocations raise MemoryError at once."""
  for bomb in ("x = bytearray(8 * 1024**3)", "xs = []\nwhile True:\n    xs.append(bytearray(64 * 1024**2))"):
    score, elapsed = _timed(bomb)
    assert score == 0.0 and elapsed < LIMITS.timeout_s + 2.0


def _processes_of(uid: int) -> list[str]:
  """Live (non-zombie) processes of uid, as 'pid state'."""
  out = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue
    if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
      out.append(f"{pid} {fields['State'].strip()}")
  return out


def test_fork_bomb_is_bounded_and_cleaned_up():
  """RLIMIT_NPROC caps the bomb at max_processes tasks above what the sandbox user runs; the timeout kills
  the process group (and the pid namespace, whose processes die with its pid 1). As root without a user to
  drop to, RLIMIT_NPROC is not enforced and running a fork bomb could take the machine down: skipped."""
  info = code_lib.sandbox_info()
  if not info.nproc_enforced:
    pytest.skip("running as root with no unprivileged user to drop to: RLIMIT_NPROC is not enforced")
  bomb = ("import os\ncount = 0\nwhile True:\n    try:\n        os.fork()\n        count += 1\n"
          "    except OSError:\n        pass\n")
  score, elapsed = _timed(bomb)
  assert score == 0.0 and elapsed < LIMITS.timeout_s + 2.0
  if info.run_as is not None:  # as `nobody` we can check that nothing of the bomb is left running.
    deadline = time.monotonic() + 5.0
    while _processes_of(info.run_as[0]) and time.monotonic() < deadline:
      time.sleep(0.1)
    assert not _processes_of(info.run_as[0])


def test_fork_limit_is_enforced():
  """Forking sleepers stops at the process limit (EAGAIN), well before 200; the program reports the count."""
  if not code_lib.sandbox_info().nproc_enforced:
    pytest.skip("running as root with no unprivileged user to drop to: RLIMIT_NPROC is not enforced")
  program = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(10)\n        os._exit(0)\n"
             "    n += 1\nprint('forked', n)\n")
  result = code_lib.run_python(program, LIMITS)
  assert result.completed, result.stderr
  # At most max_processes tasks of the sandbox uid (pid 1 and the forks), give or take the launcher.
  assert int(result.stdout.split("forked")[1].split()[0]) <= LIMITS.max_processes + 1


@pytest.fixture
def tcp_server():
  """A local TCP server that records whether anyone connected."""
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(4)
  server.settimeout(0.2)
  connected, stop = [], threading.Event()

  def serve():
    while not stop.is_set():
      try:
        conn, _ = server.accept()
        connected.append(1)
        conn.close()
      except OSError:
        pass
  thread = threading.Thread(target=serve, daemon=True)
  thread.start()
  yield server.getsockname()[1], connected
  stop.set()
  thread.join()
  server.close()


def test_no_network_from_python(tcp_server):
  """A reachable local server: the program's connection must fail (audit hook, and the empty network
  namespace), so the test after it never runs."""
  port, connected = tcp_server
  score, _ = _timed(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()")
  assert score == 0.0 and not connected
  with socket.create_connection(("127.0.0.1", port), timeout=1):  # positive control: it is reachable here.
    pass


def test_no_network_from_a_child_process(tcp_server):
  """A child interpreter has no audit hook: only the network namespace stops it."""
  if not code_lib.sandbox_info().network_isolated:
    pytest.skip("no network namespace available (needs root or unprivileged user namespaces); only the "
                "in-process audit hook and dead proxy variables apply")
  port, connected = tcp_server
  child = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
  program = f"import subprocess, sys\nrc = subprocess.run([sys.executable, '-c', {child!r}]).returncode"
  assert _timed(program, "assert rc == 0")[0] == 0.0 and not connected


def test_cannot_write_outside_its_dir(tmp_path):
  """Writing into a directory of ours fails (audit hook; and as `nobody` file permissions), and the test
  after it never runs; writing inside the sandbox dir works."""
  target = tmp_path / "escaped.txt"
  assert _timed(f"open({str(target)!r}, 'w').write('pwned')")[0] == 0.0
  assert _timed(f"import os\nos.remove({str(tmp_path)!r})")[0] == 0.0
  assert not target.exists()
  assert _timed("open('inside.txt', 'w').write('ok')", "assert open('inside.txt').read() == 'ok'")[0] == 1.0


def test_cannot_write_outside_its_dir_from_a_child_process(tmp_path):
  if code_lib.sandbox_info().run_as is None:
    pytest.skip("not root: the sandbox runs as the calling user, so a child process may write where it can")
  target = tmp_path / "escaped.txt"
  assert _timed(f"import os\nrc = os.system('echo pwned > {target}')", "assert rc == 0")[0] == 0.0
  assert not target.exists()


def test_code_reward_in_score_batch():
  """Registered as 'code'; hostile completions next to honest ones: only the honest one scores, the
  batch finishes and nothing is counted as an error (a failing program is a 0, not an error)."""
  example = {"tests": "assert square(3) == 9"}
  completions = [_completion("def square(x):\n    return x * x"), _completion("while True:\n    pass"),
                 _completion("def square(x):\n    return x + x"), "no code at all"]
  rewards.REWARDS["code"]  # noqa: B018 - registered under this name.
  fn = rewards.WeightedReward("code", reward)
  out, metrics = rewards.score_batch([fn], completions, [example] * 4, timeout_s=LIMITS.timeout_s + 5)
  assert list(out) == [1.0, 0.0, 0.0, 0.0]
  assert metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0
  assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).returncode == 0  # still alive


def _needs_filesystem_wall():
  if not code_lib.sandbox_info().filesystem_isolated:
    pytest.skip("no mount namespace available (needs root or unprivileged user namespaces): a child process "
                "can write to world-writable directories")


SCRATCH = [d for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") if os.path.isdir(d)]
_ESCAPES = {  # name -> program writing the marker file {path} by a route the audit hook does not see.
    "child_process": "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > {path}'])",
    "ctypes": ("import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open({path!r}.encode(), 0o101, 0o666)\n"
               "libc.write(fd, b'pwned', 5)\nlibc.close(fd)"),
    "forked_child": ("import os, time\nif os.fork() == 0:\n    os.execv('/bin/sh', ['sh', '-c', 'echo pwned > {path}'])\n"
                     "time.sleep(0.5)"),
}


@pytest.mark.parametrize("route", list(_ESCAPES))
def test_hostile_writes_leave_no_trace_outside(route):
  """Each world-writable scratch dir (writable by `nobody` without the wall, checked below as the
  positive control) gets a marker written by a child process, ctypes or a forked exec: none exists after
  the run, and the program itself still ran to its end (it is not the crash that stopped it)."""
  _needs_filesystem_wall()
  token = f"jaxpost_escape_{os.getpid()}_{route}"
  for d in SCRATCH:
    assert os.stat(d).st_mode & 0o1777 == 0o1777, f"{d} is not world-writable: no positive control"
  program = "\n".join(_ESCAPES[route].format(path=os.path.join(d, token)) for d in SCRATCH)
  result = code_lib.run_python(program, LIMITS)
  assert result.completed, result.stderr
  left = [d for d in SCRATCH if os.path.exists(os.path.join(d, token))]
  for d in left:
    os.remove(os.path.join(d, token))
  assert not left, f"the program left files in {left}"


def test_inside_the_sandbox_its_own_tmp_works_and_vanishes():
  """/tmp inside is a private tmpfs: a child process can use it and sees none of our files; nothing it wrote
  is here afterwards. (Python code itself writes only in its dir: the audit hook.)"""
  _needs_filesystem_wall()
  marker, theirs = f"/tmp/jaxpost_visible_{os.getpid()}", f"/tmp/jaxpost_theirs_{os.getpid()}"
  with open(marker, "w") as f:
    f.write("ours")
  try:
    program = (f"import os, subprocess\nassert not os.path.exists({marker!r})\n"
               f"out = subprocess.run(['sh', '-c', 'echo x > {theirs} && cat {theirs}'], capture_output=True)\n")
    result = code_lib.run_python(program, LIMITS)
    assert result.completed, result.stderr
    assert _timed(program, "assert out.stdout == b'x\\n', out")[0] == 1.0
    assert not os.path.exists(theirs)
  finally:
    os.remove(marker)


def test_killing_its_parent_and_everything_it_can_does_not_reach_us():
  """kill(getppid()) and kill(-1) (every process the sandbox user may signal): in the pid namespace they
  reach only the program's own processes. A process of the same user outside survives (without the pid
  namespace kill(-1) would take it), we survive, and the next program passes."""
  info = code_lib.sandbox_info()
  if info.run_as is None:
    pytest.skip("not root: no other process of the sandbox user to watch")
  sleeper = subprocess.Popen(["sleep", "30"], user=info.run_as[0], group=info.run_as[1])
  try:
    program = ("import os, signal\nfor pid in (os.getppid(), -1):\n    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
    code_lib.run_python(program, LIMITS)
    assert sleeper.poll() is None, "kill(-1) inside the sandbox reached a process outside"
    assert _timed("x = 1", "assert x == 1")[0] == 1.0
  finally:
    sleeper.kill()
    sleeper.wait()


def test_huge_output_is_bounded():
  """Unbounded stdout and a file as big as it can get: RLIMIT_FSIZE (and the tmpfs size) stop both
  within the time limit, and we keep at most the last 64 KiB of output."""
  for program in ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
                  "with open('/tmp/big', 'wb') as f:\n    while True:\n        f.write(b'x' * 1048576)"):
    start = time.monotonic()
    result = code_lib.run_python(program, LIMITS)
    assert not result.completed and time.monotonic() - start < LIMITS.timeout_s + 2.0
    assert len(result.stdout) <= 65536
