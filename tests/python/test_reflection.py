"""What a reflection-based tool (grpcurl, Postman, Kreya, ...) sees: the server lists its
services through grpc.reflection and describes every message, so a client with no stubs at all
can build a request and call a method. This is how the README's reflection example works.

Runs under .venv-pypi (grpcio-reflection, pinned in scripts/requirements-pypi.txt) against a real
attnscore-server started with --reflection (off by default).
"""
from __future__ import annotations

import unittest

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from attnscore_testing import Server


class ReflectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        # Reflection is off by default; `make serve` turns it on, as here.
        cls.server = Server(extra_args=["--reflection"])
        cls.channel = grpc.insecure_channel(cls.server.target)
        grpc.channel_ready_future(cls.channel).result(timeout=60)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.channel.close()
        cls.server.stop()

    def test_lists_every_service(self) -> None:
        database = ProtoReflectionDescriptorDatabase(self.channel)
        services = set(database.get_services())
        for expected in ("attnscore.v1.AttentionScorer", "grpc.health.v1.Health",
                         "inference.GRPCInferenceService"):
            self.assertIn(expected, services)

    def test_calls_a_method_with_no_stubs(self) -> None:
        # Everything below comes from the server: the service, the method, the message types.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        service = pool.FindServiceByName("attnscore.v1.AttentionScorer")
        method = service.FindMethodByName("GetServerInfo")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString)
        info = call(request_class(), timeout=30)
        self.assertTrue(info.version)
        self.assertEqual(info.device, "cpu")
        score = service.FindMethodByName("Score")
        self.assertEqual(score.input_type.full_name, "attnscore.v1.ScoreRequest")
        self.assertIn("query", score.input_type.fields_by_name)


if __name__ == "__main__":
    unittest.main()
