from tests.unit.scoring.conftest import trained  # noqa: F401 - shared fixture
