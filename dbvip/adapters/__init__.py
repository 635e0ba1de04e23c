"""Adapters: thin implementations of the ports over etcd, PostgreSQL, netlink and raw sockets."""
