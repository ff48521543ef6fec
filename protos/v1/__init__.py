"""Code generated from ``protos/edgefleet/v1/fleet.proto``; do not edit by hand."""
