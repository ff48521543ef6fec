"""Protocol messages and the gRPC service shared by the controller and its agents.

``edgefleet.protos.v1`` contains the code generated from ``protos/edgefleet/v1/fleet.proto``;
``python -m edgefleet.protos.generate`` regenerates it.
"""

from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

__all__ = ["fleet_pb2", "fleet_pb2_grpc"]
