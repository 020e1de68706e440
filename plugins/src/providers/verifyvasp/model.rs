//! The callback bodies VerifyVASP sends, typed and documented (seed: the Callback API
//! page), with IVMS101 as a nested schema that routes can walk.

use poem_openapi::{Enum, Object, Union, types::Example};
use serde_json::json;

use crate::types::Open;

/// A callback from the VerifyVASP enclave. `callbackType` says which of three it is; the
/// shape of `data` follows from it.
#[derive(Union, Debug, Clone, PartialEq)]
#[oai(discriminator_name = "callbackType", one_of)]
// poem-openapi unions cannot hold a Box; a callback is parsed once per request.
#[allow(clippy::large_enum_variant)]
pub enum Callback {
    /// The result of a verification requested earlier.
    #[oai(mapping = "VERIFICATION_RESULT")]
    VerificationResult(VerificationResultCallback),
    /// The originating VASP reported the transaction hash of a verification.
    #[oai(mapping = "TX_REPORT")]
    TxReport(TxReportCallback),
    /// The originating VASP reported an error for a verification.
    #[oai(mapping = "ERROR_REPORT")]
    ErrorReport(ErrorReportCallback),
}

impl Callback {
    /// The `callbackType` value.
    pub fn callback_type(&self) -> &'static str {
        match self {
            Callback::VerificationResult(_) => "VERIFICATION_RESULT",
            Callback::TxReport(_) => "TX_REPORT",
            Callback::ErrorReport(_) => "ERROR_REPORT",
        }
    }

    /// The verification this callback is about.
    pub fn verification_uuid(&self) -> uuid::Uuid {
        match self {
            Callback::VerificationResult(c) => c.data.verification_uuid,
            Callback::TxReport(c) => c.data.verification_uuid,
            Callback::ErrorReport(c) => c.data.verification_uuid,
        }
    }
}

/// `callbackType: VERIFICATION_RESULT`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct VerificationResultCallback {
    /// The result.
    pub data: VerificationResultData,
}

/// The result of a verification.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct VerificationResultData {
    /// The verification this result belongs to.
    pub verification_uuid: uuid::Uuid,
    /// The verification result as the enclave reports it, e.g. `VERIFIED`, `DENIED`,
    /// `UNKNOWN`.
    pub verification_result: String,
    /// Why, in words (e.g. `Unknown address`); may be absent or null.
    pub reason: Option<String>,
    /// The travel-rule data exchanged for the verification.
    pub ivms101: Ivms101,
}

/// `callbackType: TX_REPORT`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct TxReportCallback {
    /// The report.
    pub data: TxReportData,
}

/// A transaction report.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct TxReportData {
    /// The verification the transaction belongs to.
    pub verification_uuid: uuid::Uuid,
    /// The transaction hash or id on its chain.
    pub tx_hash: String,
}

/// `callbackType: ERROR_REPORT`.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct ErrorReportCallback {
    /// The report.
    pub data: ErrorReportData,
}

/// An error report.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct ErrorReportData {
    /// The verification the error belongs to.
    pub verification_uuid: uuid::Uuid,
    /// `DENIED` or `ERROR`.
    pub result: Open<ReportResult>,
    /// The reason code.
    pub reason: Open<ReasonCode>,
    /// Details; for some reasons a comma-separated list of fields (see the reason codes).
    pub message: Option<String>,
}

/// The result of an error report.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "UPPERCASE")]
pub enum ReportResult {
    /// The verification was denied.
    Denied,
    /// The verification failed.
    Error,
}

/// Reason codes of a denied or failed verification.
///
/// | reason | result | message | meaning |
/// |---|---|---|---|
/// | `UNKNOWN-SYMBOL` | DENIED | the symbol | unknown or unsupported asset symbol |
/// | `UNKNOWN-ADDRESS` | DENIED | the address | wallet address unknown to the VASP |
/// | `LACK-OF-INFORMATION` | DENIED | comma-separated missing fields | personal information missing |
/// | `UNAVAILABLE-INFORMATION` | DENIED | comma-separated fields | information cannot be transferred |
/// | `BLACKLISTED` | DENIED | - | denied by sanction screening |
/// | `UNVERIFIED-KYC` | DENIED | - | user KYC required |
/// | `MISMATCHED-NAME` | DENIED | - | name mismatch |
/// | `UNDEFINED-ERROR` | DENIED | error description | unexpected exceptional case |
/// | `BENEFICIARY-ACCOUNT-NOT-MATCHED` | ERROR | - | beneficiary address mismatched by VASP |
/// | `REQUEST-TIMEOUT` | ERROR | - | verification exceeded the timeout |
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum ReasonCode {
    /// Unknown or unsupported asset symbol.
    UnknownSymbol,
    /// Wallet address unknown to the VASP.
    UnknownAddress,
    /// Personal information missing.
    LackOfInformation,
    /// Personal information cannot be transferred.
    UnavailableInformation,
    /// Denied by sanction screening.
    Blacklisted,
    /// User KYC required.
    UnverifiedKyc,
    /// Name mismatch.
    MismatchedName,
    /// Unexpected exceptional case.
    UndefinedError,
    /// Beneficiary address mismatched by VASP.
    BeneficiaryAccountNotMatched,
    /// Verification processing exceeded the timeout.
    RequestTimeout,
}

/// IVMS101 travel-rule data: who sends, who receives, and their VASPs.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct Ivms101 {
    /// The originator (sender) of the transfer.
    pub originator: Option<Originator>,
    /// The beneficiary (receiver) of the transfer.
    pub beneficiary: Option<Beneficiary>,
    /// The VASP of the originator.
    #[oai(rename = "originatingVASP")]
    pub originating_vasp: Option<Party>,
    /// The VASP of the beneficiary.
    #[oai(rename = "beneficiaryVASP")]
    pub beneficiary_vasp: Option<Party>,
}

/// The originator of a transfer.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct Originator {
    /// The persons sending.
    pub originator_persons: Vec<Party>,
    /// Their account numbers (wallet addresses).
    pub account_number: Option<Vec<String>>,
}

/// The beneficiary of a transfer.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct Beneficiary {
    /// The persons receiving.
    pub beneficiary_persons: Vec<Party>,
    /// Their account numbers (wallet addresses).
    pub account_number: Option<Vec<String>>,
}

/// A natural or a legal person (exactly one of the two is set).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct Party {
    /// A human being.
    pub natural_person: Option<NaturalPerson>,
    /// A company or other legal entity.
    pub legal_person: Option<LegalPerson>,
}

/// A natural person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct NaturalPerson {
    /// Their names.
    pub name: NaturalPersonName,
    /// Their addresses.
    pub geographic_address: Option<Vec<Address>>,
    /// A national identifier.
    pub national_identification: Option<NationalIdentification>,
    /// The customer number at the VASP.
    pub customer_identification: Option<String>,
    /// Date and place of birth.
    pub date_and_place_of_birth: Option<DateAndPlaceOfBirth>,
    /// ISO 3166-1 alpha-2 country of residence.
    pub country_of_residence: Option<String>,
}

/// The names of a natural person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct NaturalPersonName {
    /// Names in Latin script.
    pub name_identifier: Vec<NaturalPersonNameId>,
    /// Names in a local script.
    pub local_name_identifier: Option<Vec<NaturalPersonNameId>>,
    /// Phonetic names.
    pub phonetic_name_identifier: Option<Vec<NaturalPersonNameId>>,
}

/// One name of a natural person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct NaturalPersonNameId {
    /// Family name, or the full name when it cannot be split.
    pub primary_identifier: String,
    /// Given names.
    pub secondary_identifier: Option<String>,
    /// The kind of name.
    pub name_identifier_type: Open<NaturalNameType>,
}

/// Kinds of natural person names (IVMS101).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum NaturalNameType {
    /// Alias name.
    ALIA,
    /// Name at birth.
    BIRT,
    /// Maiden name.
    MAID,
    /// Legal name.
    LEGL,
    /// Unspecified.
    MISC,
}

/// A legal person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct LegalPerson {
    /// Its names.
    pub name: LegalPersonName,
    /// Its addresses.
    pub geographic_address: Option<Vec<Address>>,
    /// The customer number at the VASP.
    pub customer_number: Option<String>,
    /// A national identifier (e.g. an LEI or registration number).
    pub national_identification: Option<NationalIdentification>,
    /// ISO 3166-1 alpha-2 country of registration.
    pub country_of_registration: Option<String>,
}

/// The names of a legal person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct LegalPersonName {
    /// Names in Latin script.
    pub name_identifier: Vec<LegalPersonNameId>,
    /// Names in a local script.
    pub local_name_identifier: Option<Vec<LegalPersonNameId>>,
    /// Phonetic names.
    pub phonetic_name_identifier: Option<Vec<LegalPersonNameId>>,
}

/// One name of a legal person.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct LegalPersonNameId {
    /// The name.
    pub legal_person_name: String,
    /// The kind of name.
    pub legal_person_name_identifier_type: Open<LegalNameType>,
}

/// Kinds of legal person names (IVMS101).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum LegalNameType {
    /// Legal name.
    LEGL,
    /// Short name.
    SHRT,
    /// Trading name.
    TRAD,
}

/// A postal or geographic address (IVMS101).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct Address {
    /// `HOME`, `BIZZ` or `GEOG`.
    pub address_type: Open<AddressType>,
    /// Department.
    pub department: Option<String>,
    /// Sub-department.
    pub sub_department: Option<String>,
    /// Street name.
    pub street_name: Option<String>,
    /// Building number.
    pub building_number: Option<String>,
    /// Building name.
    pub building_name: Option<String>,
    /// Floor.
    pub floor: Option<String>,
    /// Post box.
    pub post_box: Option<String>,
    /// Room.
    pub room: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// Town name.
    pub town_name: Option<String>,
    /// Town location name.
    pub town_location_name: Option<String>,
    /// District name.
    pub district_name: Option<String>,
    /// Country subdivision (state, province).
    pub country_sub_division: Option<String>,
    /// Free-form address lines.
    pub address_line: Option<Vec<String>>,
    /// ISO 3166-1 alpha-2 country.
    pub country: String,
}

/// Kinds of address (IVMS101).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum AddressType {
    /// Residential.
    HOME,
    /// Business.
    BIZZ,
    /// Geographic.
    GEOG,
}

/// A national identifier (IVMS101).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct NationalIdentification {
    /// The identifier.
    pub national_identifier: String,
    /// Its kind.
    pub national_identifier_type: Open<NationalIdentifierType>,
    /// ISO 3166-1 alpha-2 country that issued it.
    pub country_of_issue: Option<String>,
    /// The registration authority (GLEIF RA code).
    pub registration_authority: Option<String>,
}

/// Kinds of national identifier (IVMS101).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum NationalIdentifierType {
    /// Alien registration number.
    ARNU,
    /// Passport number.
    CCPT,
    /// Registration authority identifier.
    RAID,
    /// Driver's licence number.
    DRLC,
    /// Foreign investment identity number.
    FIIN,
    /// Tax identification number.
    TXID,
    /// Social security number.
    SOCS,
    /// Identity card number.
    IDCD,
    /// Legal Entity Identifier.
    LEIX,
    /// Unspecified.
    MISC,
}

/// Date and place of birth.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct DateAndPlaceOfBirth {
    /// ISO 8601 date.
    pub date_of_birth: String,
    /// Place of birth.
    pub place_of_birth: String,
}

/// The answer to every authenticated callback.
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct CallbackResult {
    /// Always `true`: the callback was received (stored, or recognised as a repeat).
    pub result: bool,
}

impl Example for CallbackResult {
    fn example() -> Self {
        CallbackResult { result: true }
    }
}

/// The seed's example bodies, one per callback type.
pub fn seed_examples() -> [serde_json::Value; 3] {
    [
        json!({
            "callbackType": "VERIFICATION_RESULT",
            "data": {
                "verificationUuid": "64ab871b-14a3-47df-9b80-368e29fe8180",
                "verificationResult": "UNKNOWN",
                "reason": "Unknown address",
                "ivms101": {
                    "originator": {
                        "originatorPersons": [{"naturalPerson": {"name": {"nameIdentifier": [
                            {"primaryIdentifier": "Jamse", "secondaryIdentifier": "Din", "nameIdentifierType": "LEGL"}
                        ]}}}],
                        "accountNumber": ["0x5811001506550d8356a215be229c15b6ef371a9a"]
                    },
                    "beneficiary": {
                        "beneficiaryPersons": [{"naturalPerson": {"name": {"nameIdentifier": [
                            {"primaryIdentifier": "Taylor", "secondaryIdentifier": "Robbins", "nameIdentifierType": "LEGL"}
                        ]}}}],
                        "accountNumber": ["0xb0bFf9721871e22653358956cf59a5FdBF3D752F"]
                    },
                    "originatingVASP": {"legalPerson": {
                        "name": {"nameIdentifier": [{"legalPersonName": "Lambda256", "legalPersonNameIdentifierType": "LEGL"}]},
                        "geographicAddress": [{"addressType": "GEOG", "postcode": "123123c", "townName": "Yeoksam-dong",
                            "addressLine": ["sechogu street", "100-100"], "country": "KR"}],
                        "nationalIdentification": {"nationalIdentifier": "KR0001", "nationalIdentifierType": "RAID", "registrationAuthority": "RA000151"}
                    }},
                    "beneficiaryVASP": {"legalPerson": {
                        "name": {"nameIdentifier": [{"legalPersonName": "Lambda256 Exchage", "legalPersonNameIdentifierType": "LEGL"}]},
                        "geographicAddress": [{"addressType": "GEOG", "postcode": "234234", "townName": "Yeoksam-dong",
                            "addressLine": ["sechogu street", "100-100"], "country": "KR"}],
                        "nationalIdentification": {"nationalIdentifier": "123456", "nationalIdentifierType": "RAID", "registrationAuthority": "RA000677"}
                    }}
                }
            }
        }),
        json!({
            "callbackType": "TX_REPORT",
            "data": {
                "verificationUuid": "64ab871b-14a3-47df-9b80-368e29fe8181",
                "txHash": "0x9fd7afd46e4402c7197b4d8deb0199fcf7c1f57ef70c339f403a1cqwerc31c28"
            }
        }),
        json!({
            "callbackType": "ERROR_REPORT",
            "data": {
                "verificationUuid": "64ab871b-14a3-47df-9b80-368e29fe8182",
                "result": "ERROR",
                "reason": "BLACKLISTED",
                "message": "Originator is included in the blacklist."
            }
        }),
    ]
}

fn seed<T: poem_openapi::types::ParseFromJSON>(i: usize) -> T {
    let mut v = seed_examples()[i].clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("callbackType");
    }
    // The seed examples are fixed and parse (a unit test holds them to it).
    T::parse_from_json(Some(v)).unwrap_or_else(|_| unreachable!("seed example {i} parses"))
}

impl Example for VerificationResultCallback {
    fn example() -> Self {
        seed(0)
    }
}

impl Example for TxReportCallback {
    fn example() -> Self {
        seed(1)
    }
}

impl Example for ErrorReportCallback {
    fn example() -> Self {
        seed(2)
    }
}
