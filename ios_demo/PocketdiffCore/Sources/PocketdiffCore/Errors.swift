// Mirrors pocketdiff/errors.py: the one error type for bad user input, and the standard "unknown X" error.
import Foundation

/// A problem with the user's input (a bad bundle, value or file). The message names the bad value and what is
/// allowed, in the same words as the Python runtime.
public struct PocketdiffError: Error, LocalizedError, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var errorDescription: String? { message }
    public var description: String { message }
}

/// `unknown WHAT 'value'; allowed: a, b` (errors.choice_error).
func choiceError(_ what: String, _ value: JSON, _ allowed: [String]) -> PocketdiffError {
    PocketdiffError("unknown \(what) \(value.repr); allowed: \(allowed.joined(separator: ", "))")
}

func choiceError(_ what: String, _ value: String, _ allowed: [String]) -> PocketdiffError {
    choiceError(what, JSON.string(value), allowed)
}
