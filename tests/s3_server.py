"""A real S3 API on 127.0.0.1 for tests: moto's server with one bucket, reached through the standard AWS variables."""

from __future__ import annotations

import socket
from contextlib import contextmanager

BUCKET = "fashion-tune-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server():
    """Start moto's S3 server and create BUCKET; yields the environment variables that point boto3, pyarrow and Ray at it.

    pyarrow (>= 15) and boto3 read the endpoint from AWS_ENDPOINT_URL_S3 (AWS_ENDPOINT_URL for all
    services); an http:// endpoint also tells pyarrow to use plain HTTP.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()
