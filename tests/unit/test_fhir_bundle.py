"""The FHIR R4 transaction Bundle: content, idempotency keys, and validation by
two independent libraries (fhir.resources R4B models and fhirclient R4 models)."""

from __future__ import annotations

import base64
import json

import pytest

from edge_app.store.db import Store  # noqa: E402
from edge_app.sync.errors import PermanentError  # noqa: E402
from edge_app.sync.fhir_bundle import COMPONENT_SYSTEM, GALLERY_MAX, build_bundle  # noqa: E402
from edge_app.sync.fhir_sender import FhirSender, store_gallery  # noqa: E402
from edge_app.sync.outbox import Outbox  # noqa: E402
from edge_app.sync.payload import ResultPayload  # noqa: E402
from tests.sync_fixtures import IDENT_SYSTEM, finalised_session  # noqa: E402

LOINC = {"neutrophil": "770-8", "lymphocyte": "736-9", "monocyte": "5905-5", "eosinophil": "713-8",
         "basophil": "706-2"}


def _bundle(tmp_path, crops=0, **kw):
    store = Store(tmp_path / "data")
    finalised_session(store, crops=crops, **kw)
    entry = Outbox(store).due()[0]
    sender = FhirSender(None, IDENT_SYSTEM, store_gallery(store) if crops else None)
    return sender.bundle_for(entry), entry


def _validate_both(bundle):
    from fhir.resources.R4B.bundle import Bundle as R4BBundle
    from fhirclient.models.bundle import Bundle as ClientBundle
    R4BBundle.model_validate(bundle)
    ClientBundle(json.loads(json.dumps(bundle)), strict=True)


def test_bundle_is_valid_r4(tmp_path):
    bundle, _ = _bundle(tmp_path, crops=4)
    _validate_both(bundle)


def test_validators_do_reject_a_broken_bundle(tmp_path):
    """The validation above can fail: a wrong type in a value is caught by both."""
    from fhirclient.models.fhirabstractbase import FHIRValidationError
    from pydantic import ValidationError
    bundle, _ = _bundle(tmp_path)
    bundle["entry"][0]["resource"]["valueQuantity"]["value"] = "sixty"
    with pytest.raises(ValidationError):
        from fhir.resources.R4B.bundle import Bundle as R4BBundle
        R4BBundle.model_validate(bundle)
    with pytest.raises(FHIRValidationError):
        from fhirclient.models.bundle import Bundle as ClientBundle
        ClientBundle(bundle, strict=True)


def test_one_observation_per_class_with_loinc_ucum_ci_and_counts(tmp_path):
    bundle, entry = _bundle(tmp_path)
    payload = entry.payload
    assert bundle["type"] == "transaction"
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(obs) == 5
    for cls, code in LOINC.items():
        (o,) = [o for o in obs if o["code"]["coding"][0]["code"] == code]
        assert o["code"]["coding"][0]["system"] == "http://loinc.org"
        assert o["valueQuantity"] == {"value": payload["percent"][cls], "unit": "%",
                                      "system": "http://unitsofmeasure.org", "code": "%"}
        comp = {c["code"]["coding"][0]["code"]: c for c in o["component"]}
        assert all(c["code"]["coding"][0]["system"] == COMPONENT_SYSTEM for c in o["component"])
        rng = comp["ci95"]["valueRange"]
        assert [rng["low"]["value"], rng["high"]["value"]] == payload["ci95"][cls]
        assert rng["low"]["code"] == rng["high"]["code"] == "%"
        assert comp["cells-counted"]["valueInteger"] == payload["counts"][cls]
        assert comp["cells-total"]["valueInteger"] == payload["total"]
        assert "referenceRange" not in o  # a reader would take it for the normal range
        assert o["status"] == "final"
        assert o["device"]["display"] == payload["device"]
        assert o["performer"] == [{"display": payload["operator"]}]
        assert o["specimen"]["identifier"]["value"] == payload["sample_id"]


def test_report_links_observations_and_carries_sample_operator(tmp_path):
    bundle, entry = _bundle(tmp_path)
    report_entry = bundle["entry"][-1]
    report = report_entry["resource"]
    assert report["resourceType"] == "DiagnosticReport"
    obs_urls = [e["fullUrl"] for e in bundle["entry"][:-1]]
    assert [r["reference"] for r in report["result"]] == obs_urls
    assert report["identifier"] == [{"system": IDENT_SYSTEM, "value": entry.result_id}]
    assert report["specimen"][0]["identifier"]["value"] == entry.payload["sample_id"]
    assert report["performer"] == [{"display": entry.payload["operator"]}]
    assert report["code"]["coding"][0]["system"] == "http://loinc.org"


def test_every_entry_is_a_conditional_create_on_a_stable_identifier(tmp_path):
    bundle, entry = _bundle(tmp_path)
    idents = set()
    for e in bundle["entry"]:
        ident = e["resource"]["identifier"][0]
        assert ident["system"] == IDENT_SYSTEM
        assert ident["value"].startswith(entry.result_id)
        assert e["request"]["method"] == "POST"
        assert e["request"]["ifNoneExist"] == "identifier=" + f"{IDENT_SYSTEM}|{ident['value']}".replace(
            ":", "%3A").replace("|", "%7C")
        assert e["fullUrl"].startswith("urn:uuid:")
        idents.add(ident["value"])
    assert len(idents) == len(bundle["entry"]) == 6
    # Built again (a re-send after a crash), the bundle is identical.
    result = ResultPayload.parse(entry.result_id, entry.payload)
    assert build_bundle(result, IDENT_SYSTEM) == bundle


def test_gallery_as_presented_form_flagged_first_and_capped(tmp_path):
    bundle, entry = _bundle(tmp_path, crops=5)
    forms = bundle["entry"][-1]["resource"]["presentedForm"]
    assert len(forms) == 5
    assert all(f["contentType"] == "image/jpeg" for f in forms)
    assert base64.b64decode(forms[0]["data"]).startswith(b"\xff\xd8")
    assert "flagged" in forms[0]["title"]  # flagged cells first: the ones to review

    big, _ = _bundle(tmp_path / "big", crops=GALLERY_MAX + 10)
    assert len(big["entry"][-1]["resource"]["presentedForm"]) == GALLERY_MAX
    no_gallery, _ = _bundle(tmp_path / "none", crops=0)
    assert "presentedForm" not in no_gallery["entry"][-1]["resource"]


def test_payload_holds_only_what_the_report_needs(tmp_path):
    bundle, entry = _bundle(tmp_path)
    text = json.dumps(bundle)
    assert entry.session_id not in text  # internal ids stay on the kiosk
    assert text.count(entry.payload["sample_id"]) == 6  # specimen of the report and of each Observation
    for r in (e["resource"] for e in bundle["entry"]):
        assert "subject" not in r  # no patient data is invented


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.pop("counts"), "'counts'"),
    (lambda p: p["ci95"].update(neutrophil=[90.0, 95.0]), "does not bracket"),
    (lambda p: p["counts"].update(basophil=50), "'total' does not equal"),
    (lambda p: p["percent"].update(monocyte="lots"), "malformed"),
    (lambda p: p.update(not_reported="SELF-TEST FAILED"), "never reported"),
])
def test_malformed_payload_is_a_permanent_error_naming_the_field(tmp_path, damage, words):
    _, entry = _bundle(tmp_path)
    payload = json.loads(json.dumps(entry.payload))
    damage(payload)
    with pytest.raises(PermanentError, match=words) as info:
        ResultPayload.parse(entry.result_id, payload)
    assert entry.payload["sample_id"] not in str(info.value)
