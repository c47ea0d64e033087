"""Private sources and pretrained weights, as the real operator runs them against the emulated cluster.

The Secret named by `secretRef` exists in the emulated API server with a value the test knows; the
operator never reads it, so the value must appear in no child, no status and no Event, while the
prepare Job (and only it) mounts the Secret read-only and names the folder on its command line.
"""

from __future__ import annotations

import base64
import json

import pytest

from k8s.scenarios import children, condition, experiment, experiment_events, wait_phase

pytestmark = pytest.mark.timeout(60)

TOKEN = "Bearer op-secret-5f1d0c"
SAS = "sv=2024-05-04&sr=c&sp=r&sig=b3Atc2FzLXNpZw%3D%3D"
WEIGHTS_SHA = "6c64b313" + "0" * 56  # the full digest: a prefix is refused with url
PRIVATE = {
    "dataset": {"synthetic": None, "download": {"urls": [
        {"url": "az://lanexdata/tusimple/train_set.zip", "secretRef": {"name": "tusimple-sas"}},
        {"url": "https://data.example.com/tusimple/test_label.json", "secretRef": {"name": "tusimple-http"}},
    ]}, "prepareServiceAccountName": "tusimple-reader"},
    "training": {"backbone": "vgg16_bn", "pretrainedWeights": {
        "url": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", "sha256": WEIGHTS_SHA}},
}


def _secret(name: str, key: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {key: base64.b64encode(value.encode()).decode()}}


def test_secret_refs_are_mounted_into_the_prepare_job_only_and_their_values_shown_nowhere(api_server, running_operator):
    api_server.create(_secret("tusimple-sas", "sas", SAS))
    api_server.create(_secret("tusimple-http", "Authorization", TOKEN))
    body = experiment("lanes-private", spec=PRIVATE)
    del body["spec"]["dataset"]["synthetic"]
    api_server.create(body)
    exp = wait_phase(api_server, "lanes-private", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]

    kids = children(api_server, "lanes-private")
    (job,) = kids["jobs"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tusimple-reader"
    assert job["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["volumes"][1:] == [{"name": "secret-0", "secret": {"secretName": "tusimple-sas"}},
                                  {"name": "secret-1", "secret": {"secretName": "tusimple-http"}}]
    (container,) = pod["containers"]
    assert container["volumeMounts"][1:] == [
        {"name": "secret-0", "mountPath": "/var/run/secrets/lanex/tusimple-sas", "readOnly": True},
        {"name": "secret-1", "mountPath": "/var/run/secrets/lanex/tusimple-http", "readOnly": True}]
    script = container["command"][-1]
    assert ("lanex data download --url az://lanexdata/tusimple/train_set.zip --out /mnt/tusimple_data"
            " --credentials /var/run/secrets/lanex/tusimple-sas") in script
    assert ("lanex data download --url https://download.pytorch.org/models/vgg16_bn-6c64b313.pth --sha256 "
            f"{WEIGHTS_SHA} --out /mnt/weights --save-as {WEIGHTS_SHA}.pth --no-extract") in script

    (mpijob,) = kids["mpijobs"]
    for role in ("Launcher", "Worker"):
        template = mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]
        assert all("secret" not in volume for volume in template["volumes"])
        assert "serviceAccountName" not in template
    launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["command"][-2:] == ["--pretrained-weights", f"/mnt/weights/{WEIGHTS_SHA}.pth"]

    source = exp["status"]["provenance"]["datasetSource"]
    assert source == ("download:az://lanexdata/tusimple/train_set.zip#secretRef=tusimple-sas,"
                      "https://data.example.com/tusimple/test_label.json#secretRef=tusimple-http")
    assert job["metadata"]["annotations"]["lanex.dev/dataset-source"] == source
    with pytest.raises(AssertionError):
        condition(exp, "TrainingFromScratch")  # weights given: no warning
    seen = json.dumps([exp, kids, experiment_events(api_server, "lanes-private")])
    for secret in (TOKEN, SAS, "sig="):
        assert secret not in seen


def test_vgg16_bn_without_weights_sets_training_from_scratch_and_warns_once(api_server, running_operator):
    api_server.create(experiment("lanes-scratch", spec={"training": {"backbone": "vgg16_bn"}}))
    exp = wait_phase(api_server, "lanes-scratch", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]

    scratch = condition(exp, "TrainingFromScratch")
    assert (scratch["status"], scratch["reason"]) == ("True", "NoPretrainedWeights")
    assert scratch["message"].startswith("spec.training.pretrainedWeights is not set: vgg16_bn trains from random")
    warnings = [e for e in experiment_events(api_server, "lanes-scratch")
                if e["type"] == "Warning" and e["reason"] == "TrainingFromScratch"]
    assert len(warnings) == 1 and warnings[0]["message"] == scratch["message"]
    launcher = children(api_server, "lanes-scratch")["mpijobs"][0]["spec"]["mpiReplicaSpecs"]["Launcher"]
    assert "--pretrained-weights" not in launcher["template"]["spec"]["containers"][0]["command"]


def test_prepare_job_waiting_for_a_missing_secret_is_reported_and_starts_once_it_exists(api_server, running_operator):
    spec = {"dataset": {"synthetic": None, "download": {"urls": [
        {"url": "https://data.example.com/tusimple/train_set.zip", "secretRef": {"name": "late-secret"}}]}}}
    body = experiment("lanes-late", spec=spec)
    del body["spec"]["dataset"]["synthetic"]
    api_server.create(body)

    def waiting() -> bool:
        exp = api_server.get("laneexperiments", "lanes-late", "default") or {}
        return any(c["type"] == "DataPrepared" and c.get("reason") == "SecretNotFound"
                   for c in (exp.get("status") or {}).get("conditions") or [])

    api_server.wait_for(waiting, timeout=20, message="DataPrepared False/SecretNotFound")
    exp = api_server.get("laneexperiments", "lanes-late", "default")
    prepared = condition(exp, "DataPrepared")
    assert prepared["status"] == "False" and exp["status"]["phase"] == "Downloading"
    assert 'secret "late-secret" not found' in prepared["message"]
    assert prepared["message"].startswith("Job lanes-late-prepare waits for its Secrets (late-secret, spec...secretRef)")
    # the Event follows the status write
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "lanes-late")
                                            if e["reason"] == "SecretNotFound"], message="a SecretNotFound Event")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    api_server.create(_secret("late-secret", "Authorization", TOKEN))
    exp = wait_phase(api_server, "lanes-late", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert condition(exp, "DataPrepared")["reason"] == "Completed"
    assert len([e for e in experiment_events(api_server, "lanes-late") if e["reason"] == "SecretNotFound"]) == 1
    assert TOKEN not in json.dumps([exp, experiment_events(api_server, "lanes-late")])
