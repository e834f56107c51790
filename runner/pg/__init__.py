"""PostgreSQL: the client tools and their pipelines, sessions, database state and the safe swap."""
