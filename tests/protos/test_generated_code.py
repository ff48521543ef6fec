from edgefleet.protos import generate
from edgefleet.protos.v1 import fleet_pb2


def test_generated_code_matches_proto_files():
    stale = generate.find_stale_files(generate.generate_sources())

    assert stale == [], "run `python -m edgefleet.protos.generate`:\n" + "\n".join(stale)


def test_stale_check_detects_edit(tmp_path, monkeypatch):
    generated = generate.generate_sources()
    name = "fleet_pb2.py"
    edited = tmp_path / name
    edited.write_text(generated[name] + "# hand edit\n")
    monkeypatch.setattr(generate, "OUTPUT_DIR", tmp_path)

    stale = generate.find_stale_files({name: generated[name]})

    assert len(stale) == 1
    assert "hand edit" in stale[0]


def test_service_exposes_session_and_chunked_download():
    service = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"]
    methods = {method.name: method for method in service.methods}

    assert methods["Session"].client_streaming and methods["Session"].server_streaming
    assert methods["DownloadArtifact"].server_streaming
    assert not methods["DownloadArtifact"].client_streaming
