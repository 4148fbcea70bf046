"""The state database: schema, engine (PRAGMAs, migrations) and the records a run keeps."""
