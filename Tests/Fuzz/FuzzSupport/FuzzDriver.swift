#if canImport(Glibc)
import Glibc
#endif

/// What every fuzz target shares. Built for fuzzing (`Tests/Fuzz/run`: `swift build
/// --sanitize=fuzzer -Xswiftc -DFUZZING`), a target is `LLVMFuzzerTestOneInput` and libFuzzer's
/// own main drives it (a corpus directory, `-max_total_time=N`, ...). Built plainly (`swift
/// build`), its main replays the files or directories given, or its seed corpus
/// (`Tests/Fuzz/corpus/NAME`), once each: every crash a fuzzer found stays a regression test that
/// runs without a fuzzer.
///
/// A target is one function, `@_silgen_name("tapbridge_fuzz_one") func fuzz(_ data:
/// UnsafeRawBufferPointer)`, and in the plain build a main that calls `FuzzDriver.replay`.
public enum FuzzDriver {
    static func target(_ data: UnsafeRawBufferPointer) { tapbridgeFuzzOne(data) }

    /// The plain build's main: replays the arguments (or the seed corpus) and exits.
    public static func replay(_ name: String) -> Never {
        exit(replay(name, Array(CommandLine.arguments.dropFirst())))
    }

    /// Runs the target once on each file (directories: each file in them, sorted); returns the
    /// exit status.
    static func replay(_ name: String, _ paths: [String]) -> Int32 {
        let roots = paths.isEmpty ? [corpusDirectory(name)] : paths
        var files: [String] = []
        for root in roots {
            var st = stat()
            guard stat(root, &st) == 0 else {
                print("\(name): cannot read \(root)")
                return 2
            }
            if st.st_mode & S_IFMT == S_IFDIR {
                guard let dir = opendir(root) else { return 2 }
                var names: [String] = []
                while let entry = readdir(dir) {
                    let n = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    if !n.hasPrefix(".") { names.append(n) }
                }
                closedir(dir)
                files += names.sorted().map { "\(root)/\($0)" }
            } else {
                files.append(root)
            }
        }
        for file in files {
            guard let bytes = read(file) else {
                print("\(name): cannot read \(file)")
                return 2
            }
            bytes.withUnsafeBytes { target($0) }
        }
        print("\(name): \(files.count) inputs replayed, no crash")
        return 0
    }

    /// `Tests/Fuzz/corpus/NAME`, beside this file's directory.
    static func corpusDirectory(_ name: String) -> String {
        var path = #filePath
        for _ in 0..<2 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
        return "\(path)/corpus/\(name)"
    }

    static func read(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return out
    }
}


/// The target's function, defined by each fuzz target.
@_silgen_name("tapbridge_fuzz_one")
func tapbridgeFuzzOne(_ data: UnsafeRawBufferPointer)

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    tapbridgeFuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#endif
