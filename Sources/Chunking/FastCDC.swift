/// Chunk size limits for FastCDC. Defaults are 16/64/256 KiB.
public struct ChunkParameters: Equatable, Sendable, CustomStringConvertible {
    public let minSize: Int
    public let avgSize: Int
    public let maxSize: Int
    /// Normalized chunking level (0...3); syncd uses 1.
    public let normalization: Int

    public static let `default` = try! ChunkParameters(min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024)

    /// The largest maximum chunk size syncd accepts (it bounds wire frames).
    public static let largestMaxSize = 1 << 20

    /// Validates the sizes the way the reference implementation bounds them, and within what the wire carries.
    public init(min: Int, avg: Int, max: Int, normalization: Int = 1) throws {
        guard (64...1_048_576).contains(min) else { throw ChunkParameterError("minimum chunk size \(min) is outside 64...1048576") }
        guard (256...4_194_304).contains(avg) else { throw ChunkParameterError("average chunk size \(avg) is outside 256...4194304") }
        guard (1024...ChunkParameters.largestMaxSize).contains(max) else {
            throw ChunkParameterError("maximum chunk size \(max) is outside 1024...\(ChunkParameters.largestMaxSize)")
        }
        guard min <= avg, avg <= max else { throw ChunkParameterError("chunk sizes must satisfy min <= avg <= max (got \(min)/\(avg)/\(max))") }
        guard (0...3).contains(normalization) else { throw ChunkParameterError("normalization level \(normalization) is outside 0...3") }
        minSize = min
        avgSize = avg
        maxSize = max
        self.normalization = normalization
    }

    public var description: String { "\(minSize)/\(avgSize)/\(maxSize)" }
}

/// A chunk size setting that cannot be used.
public struct ChunkParameterError: Error, CustomStringConvertible {
    public let description: String
    init(_ text: String) { description = text }
}

/// FastCDC 2020 (Xia et al.): gear hash, cut-point skipping below the minimum, normalized chunking and
/// two bytes per loop step. Cut points equal the reference implementation's (fastcdc-rs `v2020`).
public struct FastCDC: Sendable {
    public let parameters: ChunkParameters
    private let maskS: UInt64
    private let maskL: UInt64
    private let maskSShifted: UInt64
    private let maskLShifted: UInt64

    /// Mask values spread evenly over 64 bits, indexed by the number of one bits (reference values).
    private static let masks: [UInt64] = [
        0, 0, 0, 0, 0,
        0x0000_0000_0180_4110, 0x0000_0000_0180_3110, 0x0000_0000_1803_5100, 0x0000_0018_0003_5300,
        0x0000_0190_0035_3000, 0x0000_5900_0353_0000, 0x0000_d900_0353_0000, 0x0000_d901_0353_0000,
        0x0000_d903_0353_0000, 0x0000_d903_1353_0000, 0x0000_d90f_0353_0000, 0x0000_d903_0353_7000,
        0x0000_d907_0353_7000, 0x0000_d907_0753_7000, 0x0000_d917_0753_7000, 0x0000_d917_4753_7000,
        0x0000_d917_6753_7000, 0x0000_d937_6753_7000, 0x0000_d937_7753_7000, 0x0000_d937_7757_7000,
        0x0000_db37_7757_7000,
    ]

    public init(_ parameters: ChunkParameters = .default) {
        self.parameters = parameters
        let bits = Int(Double(parameters.avgSize).log2Rounded)
        maskS = FastCDC.masks[bits + parameters.normalization]
        maskL = FastCDC.masks[bits - parameters.normalization]
        maskSShifted = maskS &<< 1
        maskLShifted = maskL &<< 1
    }

    /// Finds the end of the chunk that starts at `bytes[0]`. Returns the gear hash at the cut and the
    /// chunk length. `bytes` must hold either at least `maxSize` bytes or everything up to end of input.
    @inline(__always)
    public func cut(_ bytes: UnsafeRawBufferPointer) -> (hash: UInt64, length: Int) {
        var remaining = bytes.count
        let minSize = parameters.minSize
        if remaining <= minSize { return (0, remaining) }
        var center = parameters.avgSize
        if remaining > parameters.maxSize {
            remaining = parameters.maxSize
        } else if remaining < center {
            center = remaining
        }
        let p = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let gear = GearTables.gear
        let gearShifted = GearTables.shifted
        var index = minSize / 2
        var hash: UInt64 = 0
        let (mS, mSs, mL, mLs) = (maskS, maskSShifted, maskL, maskLShifted)
        let centerHalf = center / 2
        while index < centerHalf {
            let a = index &* 2
            hash = (hash &<< 2) &+ gearShifted[Int(p[a])]
            if hash & mSs == 0 { return (hash, a) }
            hash = hash &+ gear[Int(p[a &+ 1])]
            if hash & mS == 0 { return (hash, a &+ 1) }
            index &+= 1
        }
        let endHalf = remaining / 2
        while index < endHalf {
            let a = index &* 2
            hash = (hash &<< 2) &+ gearShifted[Int(p[a])]
            if hash & mLs == 0 { return (hash, a) }
            hash = hash &+ gear[Int(p[a &+ 1])]
            if hash & mL == 0 { return (hash, a &+ 1) }
            index &+= 1
        }
        return (hash, remaining)
    }
}

extension Double {
    /// log2 rounded to the nearest integer, as the reference computes the mask bit count.
    fileprivate var log2Rounded: Double {
        var value = self
        var exponent = 0.0
        while value >= 2 { value /= 2; exponent += 1 }
        // value is in [1, 2): round log2(value) by comparing with sqrt(2).
        return value >= 1.4142135623730951 ? exponent + 1 : exponent
    }
}

/// The gear tables as raw pointers, made once, so the inner loop has no array bounds or retain traffic (reading
/// the arrays through `withUnsafeBufferPointer` at each cut measured 10% slower). Constants: the memory is written
/// once, before the pointer is published by the lazy static initializer, and only read after; hence
/// `nonisolated(unsafe)` on these two immutable lets (no mutable global).
enum GearTables {
    nonisolated(unsafe) static let gear: UnsafePointer<UInt64> = copy(gearTable)
    nonisolated(unsafe) static let shifted: UnsafePointer<UInt64> = copy(gearTableShifted)

    private static func copy(_ table: [UInt64]) -> UnsafePointer<UInt64> {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        p.initialize(from: table, count: 256)
        return UnsafePointer(p)
    }
}
