// A JSON value that keeps what Python's json module keeps: bool vs int vs float, so the hand checks of
// Manifest.swift and Schedulers.swift can refuse exactly what the Python runtime refuses, and `repr` writes a
// value as Python's repr() does, so error messages carry the same words. (No Python counterpart: json is stdlib.)
import Foundation

public enum JSON: Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    /// Parse bytes as Python's `json.loads` does (it also reads `Infinity`/`NaN`, as diffusers' configs hold
    /// `"lambda_min_clipped": -Infinity`; for those we fall back to Foundation's JSON5 reader).
    public static func parse(_ data: Data) throws -> JSON {
        do {
            return JSON(any: try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
        } catch {
            guard let text = String(data: data, encoding: .utf8), text.contains("Infinity") || text.contains("NaN")
            else { throw error }
            return JSON(any: try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed, .json5Allowed]))
        }
    }

    /// From a JSONSerialization object. NSNumber is split by its type: CFBoolean -> bool, a floating objCType
    /// ("d"/"f", what "2.0" and "1e3" parse to) -> double, else int.
    public init(any: Any) {
        switch any {
        case is NSNull: self = .null
        case let n as NSNumber:
            if CFGetTypeID(n) == CFBooleanGetTypeID() {
                self = .bool(n.boolValue)
            } else {
                let type = String(cString: n.objCType)
                self = (type == "d" || type == "f") ? .double(n.doubleValue) : .int(n.intValue)
            }
        case let s as String: self = .string(s)
        case let a as [Any]: self = .array(a.map(JSON.init(any:)))
        case let d as [String: Any]: self = .object(d.mapValues(JSON.init(any:)))
        default: self = .string("\(any)")
        }
    }

    /// The value as JSONSerialization wants it (to write an edited manifest in the tests).
    public var foundation: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return b
        case .int(let i): return i
        case .double(let d): return d
        case .string(let s): return s
        case .array(let a): return a.map(\.foundation)
        case .object(let o): return o.mapValues(\.foundation)
        }
    }

    public subscript(key: String) -> JSON? { if case .object(let o) = self { return o[key] } else { return nil } }

    public var objectValue: [String: JSON]? { if case .object(let o) = self { return o } else { return nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    /// An integer that is not a bool (Python's `isinstance(v, int) and not isinstance(v, bool)`).
    public var intValue: Int? { if case .int(let i) = self { return i } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    /// An int or a float, not a bool (finite or not).
    public var numberValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    public var isNull: Bool { self == .null }

    /// Python's `type(v).__name__`.
    public var typeName: String {
        switch self {
        case .null: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .object: return "dict"
        }
    }

    /// Python's `repr(v)` (object keys sorted: JSONSerialization does not keep their order).
    public var repr: String {
        switch self {
        case .null: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pyFloat(d)
        case .string(let s): return pyString(s)
        case .array(let a): return "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { "\(pyString($0)): \(o[$0]!.repr)" }.joined(separator: ", ") + "}"
        }
    }

    /// Python's `==` between JSON values (True == 1 == 1.0).
    public func pyEquals(_ other: JSON) -> Bool {
        func num(_ v: JSON) -> Double? { if case .bool(let b) = v { return b ? 1 : 0 }; return v.numberValue }
        if let a = num(self), let b = num(other) { return a == b }
        return self == other
    }
}

/// Python's float repr for the common cases (shortest round trip; `1e-05`, `2.0`, `inf`).
func pyFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    return "\(d)"
}

/// Python's str repr: single quotes unless the text has a single quote and no double quote.
func pyString(_ s: String) -> String {
    let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for ch in s.unicodeScalars {
        switch ch {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\0": out += "\\x00"
        default:
            if Character(ch) == quote { out += "\\" + String(quote) } else { out.unicodeScalars.append(ch) }
        }
    }
    return out + String(quote)
}
