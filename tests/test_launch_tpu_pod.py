"""scripts/launch_tpu_pod.sh --dry-run: the gcloud commands for a single-host v5e-8 and a v5p-64 pod.

Only the printed commands are checked; running them needs a Google Cloud project and TPU quota."""
import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "launch_tpu_pod.sh")


def dry_run(*args):
  out = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()], out.stderr


def test_v5e_8_existing_vm():
  cmds, log = dry_run("--tpu=my-v5e", "--zone=us-west4-a", "--accelerator=v5e-8", "--",
                      "--config=configs/sft_tiny.py", "--workdir=/mnt/runs/sft", "--config.train.steps=400")
  assert "v5litepod-8 (1 host(s))" in log
  assert [c[:5] for c in cmds] == [
      ["tar", "-czf", "/tmp/jaxpost-my-v5e.tar.gz", "-C", ROOT],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  tar, scp, install, train, logs = cmds
  assert "--exclude=.git" in tar and "--exclude=.venv" in tar
  assert scp[5:] == ["/tmp/jaxpost-my-v5e.tar.gz", "my-v5e:jaxpost.tar.gz", "--zone=us-west4-a", "--worker=all"]
  assert install[5:8] == ["my-v5e", "--zone=us-west4-a", "--worker=all"]
  assert "tar -xzf ~/jaxpost.tar.gz -C ~/jaxpost" in install[8] and "pip install -q -e .[tpu]" in install[8]
  assert train[5:8] == ["my-v5e", "--zone=us-west4-a", "--worker=all"]
  remote = train[8].removeprefix("--command=")
  assert remote.startswith("cd ~/jaxpost && nohup python3 -m jaxpost.train --distributed=on "
                           "--config=configs/sft_tiny.py --workdir=/mnt/runs/sft --config.train.steps=400 "
                           "> ~/jaxpost/train.log 2>&1")
  assert logs[5:] == ["my-v5e", "--zone=us-west4-a", "--worker=0", "--command=tail -n +1 -F ~/jaxpost/train.log"]


def test_v5p_64_created_as_spot_queued_resource():
  cmds, log = dry_run("--tpu=pod", "--zone=us-east5-a", "--accelerator=v5p-64", "--project=proj", "--create",
                      "--spot", "--", "--config=configs/grpo_gsm8k.py", "--workdir=/mnt/shared/grpo",
                      "--config.rl.reward_fns=math,format=0.1", "--config.wandb=it's quoted")
  assert "v5p-64 (8 host(s)), runtime v2-alpha-tpuv5, spot" in log
  create, describe = cmds[0], cmds[1]
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod", "--zone=us-east5-a",
                    "--project=proj", "--node-id=pod", "--accelerator-type=v5p-64",
                    "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "pod"]
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert len(ssh) == 3 and ssh[0][8] == ssh[1][8] == "--worker=all"  # Install and train on all 8 hosts.
  assert all("--project=proj" in c for c in cmds if c[0] == "gcloud")
  remote = ssh[1][9].removeprefix("--command=")
  # The train arguments survive two shells (ours and the worker's) word for word.
  words = shlex.split(remote.split(" > ")[0])
  assert words[words.index("jaxpost.train"):] == [
      "jaxpost.train", "--distributed=on", "--config=configs/grpo_gsm8k.py", "--workdir=/mnt/shared/grpo",
      "--config.rl.reward_fns=math,format=0.1", "--config.wandb=it's quoted"]
  assert ssh[-1][8:] == ["--worker=0", "--command=tail -n +1 -F ~/jaxpost/train.log"]


def test_stop_and_errors():
  cmds, _ = dry_run("--tpu=pod", "--zone=z", "--stop")
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=all",
                   "--command=kill -TERM $(cat ~/jaxpost/train.pid) 2>/dev/null || true"]]
  out = subprocess.run(["bash", SCRIPT, "--dry-run", "--zone=z", "--", "--config=x"], capture_output=True, text=True)
  assert out.returncode == 2 and "--tpu=NAME is required" in out.stderr
  out = subprocess.run(["bash", SCRIPT, "--dry-run", "--tpu=t", "--zone=z"], capture_output=True, text=True)
  assert out.returncode == 2 and "nothing to run" in out.stderr
