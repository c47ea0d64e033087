"""The `lanex` cluster commands, run as real subprocesses against the emulated cluster with the real operator.

Each scenario drives `lanex submit|wait|get|describe|logs|snapshots --cluster|delete` through the
kubeconfig of the emulator (tests/k8s) and checks what the commands print, their exit codes and
the objects they created. The flag mapping and the `--for` rules are also checked directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from k8s.emulator import FaultPlan
from k8s.scenarios import experiment, get_experiment
from lanex_operator.cli.submit import SubmitOverrides, UsageError, apply_overrides, blame
from lanex_operator.api.status import phase_reached as reached
from lanex_operator.cli.views import human_duration

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
LANEX = Path(sys.executable).with_name("lanex")
DDP_EXAMPLE = REPO / "examples" / "kubeflow-torch-ddp.yaml"


def lanex(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200"}
    return subprocess.run([str(LANEX), *args], env=env, capture_output=True, text=True, timeout=timeout)


def create_dataset_claim(cluster, name: str = "tusimple-dataset") -> None:
    cluster.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "azurenetappfiles",
                             "resources": {"requests": {"storage": "100Gi"}}}})


def test_submitted_experiment_is_followed_by_every_cluster_command_to_deletion(api_server, running_operator):
    kubeconfig = api_server.kubeconfig
    api_server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "runai-lane-detection"}})
    create_dataset_claim(api_server)

    submitted = lanex(kubeconfig, "submit", str(DDP_EXAMPLE), "--processes", "2", "-e", "BATCH_SIZE=16",
                      "-e", "FOO=bar", "--project", "lane-detection")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "laneexperiment default/kubeflow-torch-ddp created"
    spec = get_experiment(api_server, "kubeflow-torch-ddp")["spec"]
    assert spec["training"]["workers"] == 2
    assert spec["training"]["batchSize"] == 16
    assert spec["training"]["gpusPerWorker"] == 2  # from the file
    assert spec["training"]["env"] == [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "FOO", "value": "bar"}]
    assert spec["scheduler"] == {"type": "runai", "project": "lane-detection"}
    assert spec["dataset"]["existingClaim"] == {"claimName": "tusimple-dataset"}

    conflict = lanex(kubeconfig, "submit", str(DDP_EXAMPLE), "--processes", "3")
    assert conflict.returncode == 1
    assert "laneexperiment default/kubeflow-torch-ddp already exists with a different spec" in conflict.stderr
    assert "spec.training.workers" in conflict.stderr

    waited = lanex(kubeconfig, "wait", "kubeflow-torch-ddp", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    status = get_experiment(api_server, "kubeflow-torch-ddp")["status"]
    snapshot = status["provenance"]["resultSnapshot"]
    assert waited.stdout.strip() == (f"laneexperiment default/kubeflow-torch-ddp: Succeeded "
                                     f"(accuracy 0.9512, snapshot {snapshot})")

    listed = lanex(kubeconfig, "get")
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "ETA", "WORKERS", "ACCURACY", "SNAPSHOT", "AGE"]
    cells = row.split()
    assert cells[:2] == ["kubeflow-torch-ddp", "Succeeded"] and cells[-4:-1] == ["2", "0.9512", snapshot]
    # The launcher's last progress (all 30 epochs of the simulated trainer), unless the final read is still under way.
    assert cells[2:-4] in (["30/30", "100%", "done"], ["-", "-"]), cells

    described = lanex(kubeconfig, "describe", "kubeflow-torch-ddp").stdout
    assert "Phase:         Succeeded" in described
    assert "Scheduler:   runai, project lane-detection" in described
    trained = next(line for line in described.splitlines() if line.strip().startswith("Trained "))
    assert trained.split()[:3] == ["Trained", "True", "Succeeded"]
    children = {line.split()[0]: line.split()[1:] for line in described.split("Children:")[1].split("Results:")[0]
                .strip().splitlines()[1:]}
    assert children["PersistentVolumeClaim"] == ["tusimple-dataset", "Bound"]
    assert children["Job"] == ["kubeflow-torch-ddp-prepare", "Complete"]
    assert children["MPIJob"] == ["kubeflow-torch-ddp-train", "Succeeded"]
    assert children["VolumeSnapshot"][:3] == [snapshot, "readyToUse", "true,"]
    assert "Accuracy:    0.9512" in described
    pictures = described.split("Pictures (dataset volume):")[1].split("Provenance:")[0]
    assert "Curves:      /mnt/experiments/kubeflow-torch-ddp/curves.png" in pictures
    assert "Worst tests: /mnt/experiments/kubeflow-torch-ddp/worst.png" in pictures
    events = described.split("Events:")[1]
    assert "Training" in events and "LaneExperiment/kubeflow-torch-ddp" in events

    logs = lanex(kubeconfig, "logs", "kubeflow-torch-ddp")
    assert logs.returncode == 0, logs.stderr
    launcher_lines = logs.stdout.strip().splitlines()
    assert launcher_lines[0] == "lanex launch: mpirun -np 2 --hostfile /etc/mpi/hostfile lanex train"
    assert json.loads(launcher_lines[-1])["accuracy"] == 0.9512
    prepare_log = lanex(kubeconfig, "logs", "kubeflow-torch-ddp", "--prepare")
    assert prepare_log.returncode == 0, prepare_log.stderr
    assert prepare_log.stdout.strip().splitlines()[-1] == "prepared /mnt/tusimple_data"
    gone = lanex(kubeconfig, "logs", "kubeflow-torch-ddp", "--worker", "0")
    assert gone.returncode == 1
    assert "no worker 0 of mpijob default/kubeflow-torch-ddp-train: the experiment is Succeeded" in gone.stderr
    assert "cleanPodPolicy Running deletes workers" in gone.stderr

    # Its node gone, the API server cannot serve the log: the termination message (results JSON) stands in.
    api_server.set_faults(FaultPlan(error_rate=1.0, applies=lambda call: call.resource == "pods/log"))
    fallback = lanex(kubeconfig, "logs", "kubeflow-torch-ddp")
    api_server.set_faults(None)
    assert fallback.returncode == 0, fallback.stderr
    assert json.loads(fallback.stdout)["accuracy"] == 0.9512
    assert "pod kubeflow-torch-ddp-train-launcher-" in fallback.stderr and "exited with code 0" in fallback.stderr

    snapshots = lanex(kubeconfig, "snapshots", "list", "--cluster", "kubeflow-torch-ddp").stdout.strip().splitlines()
    assert snapshots[0].split() == ["NAME", "EXPERIMENT", "READYTOUSE", "RESTORESIZE", "CREATIONTIME", "SOURCEPVC",
                                    "ERROR"]
    assert len(snapshots) == 2
    fields = snapshots[1].split()
    assert fields[:4] == [snapshot, "kubeflow-torch-ddp", "true", "100Gi"] and fields[5] == "tusimple-dataset"

    restored = lanex(kubeconfig, "snapshots", "restore", snapshot, "--to", "lanes-restored", "--cluster")
    assert restored.returncode == 0, restored.stderr
    claim = api_server.get("persistentvolumeclaims", "lanes-restored", "default")
    assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                           "name": snapshot}
    assert claim["spec"]["storageClassName"] == "azurenetappfiles"
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert "lanex.dev/experiment" not in claim["metadata"]["labels"]  # the user's claim, not a child
    api_server.wait_for(lambda: (api_server.get("persistentvolumeclaims", "lanes-restored", "default")
                                 .get("status") or {}).get("phase") == "Bound", message="the restored claim to bind")

    deleted = lanex(kubeconfig, "delete", "kubeflow-torch-ddp", "--wait", "--timeout", "30")
    assert deleted.returncode == 0, deleted.stderr
    assert (f"keeps: PersistentVolumeClaim tusimple-dataset (your existing claim); VolumeSnapshot {snapshot} "
            f"(dataSource of PersistentVolumeClaim lanes-restored)") in deleted.stdout
    assert "removes: Job kubeflow-torch-ddp-prepare; MPIJob kubeflow-torch-ddp-train" in deleted.stdout
    assert f"operator: kept VolumeSnapshot {snapshot}" in deleted.stdout
    assert api_server.get("laneexperiments", "kubeflow-torch-ddp", "default") is None
    assert api_server.get("volumesnapshots", snapshot, "default") is not None  # retention kept it

    gone = lanex(kubeconfig, "describe", "kubeflow-torch-ddp")
    assert gone.returncode == 1
    assert gone.stderr.strip() == "error: laneexperiment default/kubeflow-torch-ddp not found"


def test_wait_exits_1_with_the_failure_reason_and_124_on_timeout(api_server, running_operator):
    kubeconfig = api_server.kubeconfig
    api_server.knobs.fail_mpijobs["lanes-broken"] = "RuntimeError: CUDA out of memory (rank 2)"
    api_server.knobs.paused.add("MPIJob/lanes-slow")
    api_server.create(experiment("lanes-broken"))
    api_server.create(experiment("lanes-slow"))

    failed = lanex(kubeconfig, "wait", "lanes-broken", "--timeout", "30")
    assert failed.returncode == 1, failed.stdout
    assert failed.stderr.startswith("error: laneexperiment default/lanes-broken is Failed, not Succeeded: "
                                    "TrainingFailed: MPIJob lanes-broken-train failed")
    assert "CUDA out of memory (rank 2)" in failed.stderr

    training = lanex(kubeconfig, "wait", "lanes-slow", "--for", "phase=Training", "--timeout", "30")
    assert training.returncode == 0, training.stderr
    assert training.stdout.strip() == "laneexperiment default/lanes-slow: Training"

    stuck = lanex(kubeconfig, "wait", "lanes-slow", "--timeout", "1")
    assert stuck.returncode == 124
    assert stuck.stderr.strip() == ("error: timed out after 1s waiting for laneexperiment default/lanes-slow "
                                    "to be Succeeded (phase: Training)")


def test_invalid_file_or_flag_is_refused_with_exit_2_naming_the_field_before_any_api_call(tmp_path):
    unreachable = tmp_path / "no-such-kubeconfig"
    bad = tmp_path / "bad.yaml"
    bad.write_text(DDP_EXAMPLE.read_text().replace("workers: 2", "workers: 0"))
    result = lanex(unreachable, "submit", str(bad))
    assert result.returncode == 2
    assert f"{bad}: spec.training.workers: must be >= 1 (got 0)" in result.stderr

    result = lanex(unreachable, "submit", str(DDP_EXAMPLE), "-e", "VAL_BATCH_SIZE=0")
    assert result.returncode == 2
    assert "spec.training.validation.batchSize: must be >= 1 (got 0) (from -e VAL_BATCH_SIZE)" in result.stderr


@pytest.mark.parametrize("command", [("submit",), ("run", "--workspace", "ws")], ids=["submit", "run"])
def test_a_spec_file_that_is_not_utf8_text_is_refused_with_exit_2_naming_the_file_and_offset(tmp_path, command):
    latin1 = tmp_path / "latin1.yaml"
    text = DDP_EXAMPLE.read_text()
    offset = len(text.encode())
    latin1.write_bytes(text.encode() + "# caf\u00e9 au lait\n".encode("latin-1"))
    result = lanex(tmp_path / "no-such-kubeconfig", command[0], str(latin1), *command[1:])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {latin1}: not UTF-8 text: byte offset {offset + 5} (0xe9)")
    assert "Traceback" not in result.stderr


def test_tr4896_environment_flags_set_their_typed_fields_and_other_variables_go_to_env():
    spec = {"dataset": {"synthetic": {"clips": 4}}, "training": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}}
    flags = SubmitOverrides(processes=3, gpu=1, large_shm=False, project="lane-detection", pvc="tusimple:/mnt",
                            env=("BATCH_SIZE=33", "NUM_WORKERS=4", "USE_WORKERS=true", "USE_VAL=false",
                                 "VAL_BATCH_SIZE=99", "NCCL_DEBUG=WARN", "OMP_NUM_THREADS=8"))
    result, origin = apply_overrides(spec, flags)
    assert result["training"] == {
        "workers": 3, "gpusPerWorker": 1, "largeShm": False, "batchSize": 33, "loaderWorkers": 4,
        "useWorkers": True, "validation": {"enabled": False, "batchSize": 99},
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "OMP_NUM_THREADS", "value": "8"}]}
    assert result["dataset"] == {"existingClaim": {"claimName": "tusimple"}}
    assert result["scheduler"] == {"type": "runai", "project": "lane-detection"}
    assert spec["training"]["env"][0]["value"] == "INFO"  # the input is not modified
    assert blame(["spec.training.validation.batchSize: must be >= 1"], origin) == [
        "spec.training.validation.batchSize: must be >= 1 (from -e VAL_BATCH_SIZE)"]
    with pytest.raises(UsageError, match="PVC_NAME: set by lanex"):
        apply_overrides(spec, SubmitOverrides(env=("PVC_NAME=x",)))
    with pytest.raises(UsageError, match="must be an integer"):
        apply_overrides(spec, SubmitOverrides(env=("BATCH_SIZE=many",)))
    with pytest.raises(UsageError, match="lanex mounts the dataset volume at /mnt"):
        apply_overrides(spec, SubmitOverrides(pvc="tusimple:/data"))


def test_wait_for_a_phase_accepts_phases_already_passed_and_refuses_unreachable_ones():
    assert reached("Training", "Training") is True
    assert reached("Snapshotting", "Training") is True
    assert reached("Succeeded", "Training") is True
    assert reached("Downloading", "Training") is None
    assert reached("Failed", "Training") is False
    assert reached("Failed", "Succeeded") is False
    assert reached("Succeeded", "Failed") is False
    assert reached(None, "Succeeded") is None
    assert [human_duration(s) for s in (5, 200, 3000, 5 * 3600 + 120, 30 * 3600, 4 * 86400)] == [
        "5s", "3m20s", "50m", "5h2m", "30h", "4d"]


def test_logs_follow_streams_the_launcher_while_training_runs(api_server, running_operator):
    # Training is held midway (the simulated mpi-operator's pods run, their logs stay open).
    api_server.knobs.paused.add("MPIJob.running/follow")
    api_server.create(experiment("follow"))
    kubeconfig = api_server.kubeconfig
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    follower = subprocess.Popen([str(LANEX), "logs", "follow", "--follow"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first == "lanex launch: mpirun -np 2 --hostfile /etc/mpi/hostfile lanex train\n"
        assert json.loads(follower.stdout.readline())["epoch"] == 1
        assert follower.poll() is None  # still streaming: the launcher is still running

        worker = lanex(kubeconfig, "logs", "follow", "--worker", "1")
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout == "Server listening on 0.0.0.0 port 22 (worker 1)\n"

        api_server.knobs.paused.discard("MPIJob.running/follow")
        rest, errors = follower.communicate(timeout=60)
        assert follower.returncode == 0, errors
        assert json.loads(rest.strip().splitlines()[-1])["accuracy"] == 0.9512
    finally:
        api_server.knobs.paused.discard("MPIJob.running/follow")
        if follower.poll() is None:
            follower.kill()
            follower.communicate()


def test_pod_log_is_streamed_chunk_by_chunk_while_the_container_runs():
    # A tiny HTTP server plays the API server's log stream, so that the test decides when each chunk
    # goes: the second only after the client has received the first, which a buffering client never would.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from lanex_operator.client.cluster import ClusterClient as Cluster

    first_seen = threading.Event()
    requests: list[str] = []

    class LogHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked, as the API server streams a followed log

        def chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.chunk(b"epoch 1 loss 0.91\n")
            first_seen.wait(5)
            self.chunk(b"epoch 2 loss 0.52\n")
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LogHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
        cluster = Cluster(client.ApiClient(configuration), "default")
        received = []
        for chunk in cluster.pod_log("lanes-train-launcher-x1y2z", "launcher", follow=True):
            received.append(chunk)
            first_seen.set()
        assert b"".join(received) == b"epoch 1 loss 0.91\nepoch 2 loss 0.52\n"
        assert received[0] == b"epoch 1 loss 0.91\n"
        assert requests == ["/api/v1/namespaces/default/pods/lanes-train-launcher-x1y2z/log"
                            "?container=launcher&follow=true"]
    finally:
        server.shutdown()


def test_stop_ends_a_training_experiment_stopped_and_refuses_one_that_has_ended(api_server, running_operator):
    kubeconfig = api_server.kubeconfig
    api_server.knobs.paused.add("MPIJob.running/lanes-long")  # trains until stopped
    api_server.create(experiment("lanes-long"))
    training = lanex(kubeconfig, "wait", "lanes-long", "--for", "phase=Training", "--timeout", "30")
    assert training.returncode == 0, training.stderr

    stopped = lanex(kubeconfig, "stop", "lanes-long", "--reason", "enough epochs seen")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == ("laneexperiment default/lanes-long: stop asked (enough epochs seen); "
                                      "the operator ends its training")
    exp = api_server.wait_for(lambda: (lambda e: e if (e.get("status") or {}).get("phase") == "Stopped" else None)(
        get_experiment(api_server, "lanes-long")), timeout=30, message="lanes-long to end Stopped")
    assert "enough epochs seen" in exp["status"]["message"]
    api_server.wait_for(lambda: api_server.get("mpijobs", "lanes-long-train", "default") is None, timeout=30,
                        message="its MPIJob to be deleted")

    again = lanex(kubeconfig, "stop", "lanes-long")
    assert again.returncode == 1
    assert again.stderr.strip() == ("error: laneexperiment default/lanes-long has already ended (Stopped): "
                                    "nothing to stop")
    missing = lanex(kubeconfig, "stop", "no-such")
    assert missing.returncode == 1 and "no-such" in missing.stderr
