"""From a trained model to SQL: decoding, constraints, the engine, the HTTP API and export."""
