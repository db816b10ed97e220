"""The generated Istio CA protos: up to date with their sources, and wire-compatible with Istio."""

from __future__ import annotations

import pathlib

from protos import generate
from protos.gen.istio.v1.auth import ca_pb2


def test_committed_generated_code_matches_a_fresh_generation() -> None:
    stale = generate.stale_files()
    assert stale == [], f"protos/gen is stale ({', '.join(stale)}); run `python -m protos.generate`"


def test_the_stale_check_notices_an_edited_file(tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "gen"
    generate.generate(copy)
    (copy / "istio" / "v1" / "auth" / "ca_pb2.py").write_text("# edited\n")
    (copy / "istio" / "v1" / "auth" / "extra_pb2.py").write_text("")
    assert generate.stale_files(copy) == ["istio/v1/auth/ca_pb2.py", "istio/v1/auth/extra_pb2.py"]


def test_service_method_and_field_numbers_are_istios() -> None:
    service = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert service.full_name == "istio.v1.auth.IstioCertificateService"
    assert [m.name for m in service.methods] == ["CreateCertificate"]
    request = ca_pb2.IstioCertificateRequest.DESCRIPTOR
    assert {f.name: f.number for f in request.fields} == {"csr": 1, "validity_duration": 3, "metadata": 4}
    assert request.fields_by_name["validity_duration"].type == request.fields_by_name["validity_duration"].TYPE_INT64
    response = ca_pb2.IstioCertificateResponse.DESCRIPTOR
    assert {f.name: f.number for f in response.fields} == {"cert_chain": 1}
    assert response.fields_by_name["cert_chain"].is_repeated


def test_generated_code_imports_only_under_protos_gen() -> None:
    for path in generate.GEN_DIR.rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("from istio", "import istio")):
                raise AssertionError(f"{path}: {line!r} would need a top-level `istio` package")
