"""Real components for the tests: a PKI shaped like RKE's, etcd, an S3 server, nginx."""
