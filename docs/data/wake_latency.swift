// How long DispatchQueue.concurrentPerform(iterations: 2) takes to start its iterations and to
// return, after a 128 MiB memset has left the second core idle (as the bench's cache flush does).
// Run: put it as Sources/wake/main.swift of an executable package (swift-tools-version 5.10),
// then swift build -c release && .build/release/wake. Results: docs/BENCHMARKS-attention.md,
// section of 2026-12-01 20:00-22:50 UTC.

import Dispatch
import Foundation
import Synchronization

@inline(__always) func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
nonisolated(unsafe) let flushBuf = UnsafeMutableRawPointer.allocate(byteCount: 128 << 20, alignment: 64)
func flush() { memset(flushBuf, 1, 128 << 20) }
final class Box: @unchecked Sendable { var a = [UInt64](repeating: 0, count: 4); var callerIdx = -1 }
func median(_ a: [Double]) -> Double { let s = a.sorted(); return s[s.count / 2] }

var callerStart: [Double] = [], helperStart: [Double] = [], joinLat: [Double] = []
for _ in 0..<41 {
    flush()
    let b = Box()
    let me = pthread_self()
    let t0 = now()
    DispatchQueue.concurrentPerform(iterations: 2) { i in
        let t = now()
        if pthread_equal(pthread_self(), me) != 0 { b.a[0] = t } else { b.a[1] = t }
        while now() - t < 2_000_000 {}
        if pthread_equal(pthread_self(), me) == 0 { b.a[2] = now() } else { b.a[3] = now() }
    }
    let t1 = now()
    if b.a[0] == 0 || b.a[1] == 0 { print("one thread ran both"); continue }
    callerStart.append(Double(b.a[0] - t0) / 1e3); helperStart.append(Double(b.a[1] - t0) / 1e3)
    joinLat.append(Double(t1 - max(b.a[2], b.a[3])) / 1e3)
}
print("after flush: caller first iteration \(median(callerStart)) us, helper \(median(helperStart)) us (min \(helperStart.min()!) max \(helperStart.max()!)), return after last end \(median(joinLat)) us")
