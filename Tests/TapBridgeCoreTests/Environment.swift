#if canImport(Glibc)
import Glibc
#endif

/// Test-only access to environment variables.
enum Environment {
    static var seed: String? { getenv("TAPBRIDGE_SEED").map { String(cString: $0) } }
}
