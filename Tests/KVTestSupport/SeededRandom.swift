// The generator lives in KVCore so library code (stress, demo, benchmarks) shares it with tests.
@_exported import struct KVCore.SeededRandom
