"""Private sources and pretrained weights, as the real operator runs them against the emulated cluster.

The Secret named by `secretRef` exists in the emulated API server with a value the test knows; the
operator never reads it (only its metadata, for the opt-in label), so the value must appear in no child,
no status and no Event, while the prepare Job (and only it) mounts the Secret read-only and names the
folder on its command line. A Secret or ServiceAccount is usable only when its owner opted it in (label
lanex.dev/usable-by-experiments: "true") or the chart's values list it: anything else stops the
experiment (or the sweep) at Preflight, naming the object and the label, and nothing is created.
"""

from __future__ import annotations

import base64
import json

import pytest

from k8s.scenarios import child_counts, children, condition, experiment, experiment_events, get_experiment, wait_phase

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


OPT_IN = {"lanex.dev/usable-by-experiments": "true"}
NO_CHILDREN = {"persistentvolumeclaims": 0, "jobs": 0, "mpijobs": 0, "volumesnapshots": 0}


def _secret(name: str, key: str, value: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default",
                                                               **({"labels": labels} if labels else {})},
            "data": {key: base64.b64encode(value.encode()).decode()}}


def _service_account(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "default", **({"labels": labels} if labels else {}),
                         "annotations": {"azure.workload.identity/client-id": "00000000-0000-0000-0000-0000000000aa"}}}


def _operator_reads(api_server, plural: str) -> list:
    return [call for call in api_server.calls() if call.resource == plural and call.user_agent.startswith("lanex-operator/")]


def test_secret_refs_are_mounted_into_the_prepare_job_only_and_their_values_shown_nowhere(api_server, running_operator):
    api_server.create(_secret("tusimple-sas", "sas", SAS, OPT_IN))
    api_server.create(_secret("tusimple-http", "Authorization", TOKEN, OPT_IN))
    api_server.create(_service_account("tusimple-reader", OPT_IN))
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
    # The opt-in labels were read by name, as metadata only: the Secrets' values never reached the operator.
    reads = _operator_reads(api_server, "secrets")
    assert {call.name for call in reads} == {"tusimple-sas", "tusimple-http"}
    assert all(call.verb == "get" and call.metadata_only for call in reads), reads
    assert {call.name for call in _operator_reads(api_server, "serviceaccounts")} == {"tusimple-reader"}


def test_a_secret_or_service_account_not_opted_in_stops_the_experiment_at_preflight_naming_it(api_server,
                                                                                           running_operator):
    # Another team's Secret and a workload's identity in the same namespace: a user who may create experiments
    # must not send the one as headers to a URL of their choosing, nor run as the other.
    api_server.create(_secret("tusimple-sas", "sas", SAS, OPT_IN))
    api_server.create(_secret("tusimple-http", "Authorization", TOKEN))  # not opted in
    api_server.create(_service_account("tusimple-reader"))  # not opted in
    body = experiment("lanes-borrow", spec=PRIVATE)
    del body["spec"]["dataset"]["synthetic"]
    api_server.create(body)

    def preflight() -> dict | None:
        conditions = (get_experiment(api_server, "lanes-borrow").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Preflight" and c["status"] == "False"), None)

    shown = api_server.wait_for(preflight, message="Preflight False")
    assert shown["reason"] == "MissingDependencies"
    assert ('Secret "tusimple-http" (spec.dataset.download.urls[1].secretRef) in namespace "default" is not usable by '
            'experiments: its owner opts it in with the label lanex.dev/usable-by-experiments: "true" (kubectl label '
            'secret tusimple-http -n default lanex.dev/usable-by-experiments=true), or have the operator\'s installer '
            'list default/tusimple-http in the chart value credentials.secrets') in shown["message"]
    assert ('ServiceAccount "tusimple-reader" (spec.dataset.prepareServiceAccountName) in namespace "default" is not '
            "usable by experiments") in shown["message"] and "kubectl label serviceaccount tusimple-reader" in shown["message"]
    assert "tusimple-sas" not in shown["message"]  # opted in: not a problem
    api_server.wait_for(lambda: [e for e in experiment_events(api_server, "lanes-borrow")
                                 if e["type"] == "Warning" and e["reason"] == "MissingDependencies"],
                        message="the Warning Event")
    assert child_counts(api_server, "lanes-borrow") == NO_CHILDREN  # no Job mounts it, nothing is created
    assert get_experiment(api_server, "lanes-borrow")["status"]["phase"] == "Pending"

    # The owners opt in: the experiment goes on (at the next preflight check) and succeeds.
    for plural, name in (("secrets", "tusimple-http"), ("serviceaccounts", "tusimple-reader")):
        api_server.patch(plural, name, {"metadata": {"labels": OPT_IN}}, "default")
    exp = wait_phase(api_server, "lanes-borrow", ["Succeeded", "Failed"], timeout=40)
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert TOKEN not in json.dumps([exp, experiment_events(api_server, "lanes-borrow")])


def test_a_secret_named_in_the_charts_values_is_usable_without_a_label_and_without_reading_it(api_server,
                                                                                           operator_factory):
    operator_factory({"LANEX_OPERATOR_USABLE_SECRETS": "default/tusimple-http",
                      "LANEX_OPERATOR_CREDENTIALS_BY_LABEL": "false"})
    api_server.create(_secret("tusimple-http", "Authorization", TOKEN))
    spec = {"dataset": {"synthetic": None, "download": {"urls": [
        {"url": "https://data.example.com/tusimple/test_label.json", "secretRef": {"name": "tusimple-http"}}]}}}
    listed = experiment("lanes-listed", spec=spec)
    del listed["spec"]["dataset"]["synthetic"]
    api_server.create(listed)
    assert wait_phase(api_server, "lanes-listed", ["Succeeded", "Failed"], timeout=40)["status"]["phase"] == "Succeeded"
    assert _operator_reads(api_server, "secrets") == []  # the values list it: no label to read
    # Not listed, and labels are not read (credentials.optInLabel false): refused, saying how to list it.
    api_server.create(_secret("other-team", "Authorization", TOKEN, OPT_IN))
    spec["dataset"]["download"]["urls"][0]["secretRef"]["name"] = "other-team"
    other = experiment("lanes-unlisted", spec=spec)
    del other["spec"]["dataset"]["synthetic"]
    api_server.create(other)
    api_server.wait_for(lambda: any(c["type"] == "Preflight" and c["reason"] == "SecretNotOptedIn" for c in
                                    (get_experiment(api_server, "lanes-unlisted").get("status") or {})
                                    .get("conditions") or []), message="Preflight SecretNotOptedIn")
    message = condition(get_experiment(api_server, "lanes-unlisted"), "Preflight")["message"]
    assert message.endswith("have the operator's installer list default/other-team in the chart value credentials."
                            "secrets (the operator does not read opt-in labels: chart value credentials.optInLabel is "
                            "false)"), message
    assert child_counts(api_server, "lanes-unlisted") == NO_CHILDREN and _operator_reads(api_server, "secrets") == []


def test_a_sweep_whose_template_borrows_a_secret_stops_at_preflight_before_its_dataset(api_server, running_operator):
    api_server.create(_secret("tusimple-http", "Authorization", TOKEN))  # not opted in
    template = {"dataset": {"download": {"urls": [{"url": "https://data.example.com/tusimple/test_label.json",
                                                    "secretRef": {"name": "tusimple-http"}}]}},
                "training": {"workers": 1, "epochs": 1, "backbone": "small"}}
    api_server.create({"apiVersion": "lanex.dev/v1alpha1", "kind": "LaneSweep",
                       "metadata": {"name": "borrow", "namespace": "default"},
                       "spec": {"template": template, "parameters": [{"path": "learningRate", "values": [0.01]}]}})

    def preflight() -> dict | None:
        conditions = ((api_server.get("lanesweeps", "borrow", "default") or {}).get("status") or {}).get("conditions")
        return next((c for c in conditions or [] if c["type"] == "Preflight" and c["status"] == "False"), None)

    shown = api_server.wait_for(preflight, message="the sweep's Preflight False")
    assert shown["reason"] == "SecretNotOptedIn"
    assert shown["message"].startswith('Secret "tusimple-http" (spec.template.dataset.download.urls[0].secretRef) in '
                                       'namespace "default" is not usable by experiments: its owner opts it in')
    assert api_server.list("jobs", "default") == [] and api_server.list("persistentvolumeclaims", "default") == []
    api_server.wait_for(lambda: [e for e in api_server.list("events", "default", api_version="v1")
                                 if e["involvedObject"].get("kind") == "LaneSweep" and e["reason"] == "SecretNotOptedIn"],
                        message="the sweep's Warning Event")


def test_vgg16_bn_without_weights_sets_training_from_scratch_and_warns_once(api_server, running_operator):
    api_server.create(experiment("lanes-scratch", spec={"training": {"backbone": "vgg16_bn"}}))
    exp = wait_phase(api_server, "lanes-scratch", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]

    scratch = condition(exp, "TrainingFromScratch")
    assert (scratch["status"], scratch["reason"]) == ("True", "NoPretrainedWeights")
    assert scratch["message"].startswith("spec.training.pretrainedWeights is not set: vgg16_bn trains from random")
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "lanes-scratch")
                                            if e["type"] == "Warning" and e["reason"] == "TrainingFromScratch"],
                                   message="the TrainingFromScratch Warning Event")
    assert len(warnings) == 1 and warnings[0]["message"] == scratch["message"]
    launcher = children(api_server, "lanes-scratch")["mpijobs"][0]["spec"]["mpiReplicaSpecs"]["Launcher"]
    assert "--pretrained-weights" not in launcher["template"]["spec"]["containers"][0]["command"]


def test_prepare_job_waiting_for_a_missing_secret_is_reported_and_starts_once_it_exists(api_server, operator_factory):
    # Listed in the chart's values, so the operator does not look for it at Preflight: the Job waits for it.
    operator_factory({"LANEX_OPERATOR_USABLE_SECRETS": "default/late-secret", "LANEX_OPERATOR_STUCK_CHECK_SECONDS": "0.2"})
    spec = {"dataset": {"synthetic": None, "download": {"urls": [
        {"url": "https://data.example.com/tusimple/train_set.zip", "secretRef": {"name": "late-secret"}}]}}}
    body = experiment("lanes-late", spec=spec)
    del body["spec"]["dataset"]["synthetic"]
    api_server.create(body)

    def waiting() -> dict | None:
        exp = api_server.get("laneexperiments", "lanes-late", "default") or {}
        return next((c for c in (exp.get("status") or {}).get("conditions") or []
                     if c["type"] == "DataPrepared" and c.get("reason") == "FailedMount"), None)

    # The kubelet's FailedMount Event, as for any volume that cannot be mounted (bounded by the stuck-pod timeout).
    prepared = api_server.wait_for(waiting, timeout=20, message="DataPrepared Unknown/FailedMount")
    exp = api_server.get("laneexperiments", "lanes-late", "default")
    assert prepared["status"] == "Unknown" and exp["status"]["phase"] == "Downloading"
    assert prepared["message"].startswith("Job lanes-late-prepare: pod lanes-late-prepare-")
    assert 'secret "late-secret" not found' in prepared["message"]
    # the Event follows the status write
    warnings = api_server.wait_for(lambda: [e for e in experiment_events(api_server, "lanes-late")
                                            if e["reason"] == "FailedMount"], message="a FailedMount Event")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    api_server.create(_secret("late-secret", "Authorization", TOKEN))
    exp = wait_phase(api_server, "lanes-late", ["Succeeded", "Failed"])
    assert exp["status"]["phase"] == "Succeeded", exp["status"]
    assert condition(exp, "DataPrepared")["reason"] == "Completed"
    assert len([e for e in experiment_events(api_server, "lanes-late") if e["reason"] == "FailedMount"]) == 1
    assert TOKEN not in json.dumps([exp, experiment_events(api_server, "lanes-late")])
