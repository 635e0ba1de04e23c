"""The property-based simulation's harness (its properties are in tests/unit)."""
