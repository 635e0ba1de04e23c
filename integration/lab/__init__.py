"""The lab: a real PostgreSQL cluster, etcd and a client, each host a network namespace."""
