"""dbvip: the PostgreSQL writer VIP follows the primary under an etcd lease."""

__version__ = "0.1.0"
