"""Audio analysis: decoding, features, the musicnn model, the library store and the analyzer."""
