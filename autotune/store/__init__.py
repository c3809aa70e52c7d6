"""The tuning database: SQLAlchemy models, migrations, and the unit-of-work helper."""
from .db import Store, default_url, safe_url

__all__ = ["Store", "default_url", "safe_url"]
