// Resource-server library: checks the requests a FHIR API or tool receives (DESIGN.md §2 steps 7-8).
//
//   const verifier = createResourceVerifier({
//     issuer: 'https://authz.example',          // expected iss; keys from its discovery document's jwks_uri
//     audience: 'https://fhir.example/r4',      // this server's resource indicator (RFC 8707): expected aud
//     fetch: (url, init) => undiciFetch(url, { ...init, dispatcher }), // optional: private CA for the issuer
//     introspection: { endpoint, clientId, clientSecret },             // optional: opaque tokens (RFC 7662)
//   });
//   try {
//     const token = await verifier.authenticate({
//       authorization: req.headersDistinct.authorization,   // all values: a repeated header is refused
//       clientCertificateDer: peerCertificateDer(req.socket), // TLS client certificate (requestCert: true)
//     });
//     verifier.authorize(token, { resourceType: 'Observation', interaction: 'r',
//       params: { category: ['laboratory'] }, patientId: 'Patient/123' });     // -> { scope, context }
//     const search = verifier.authorizeSearch(token, { resourceType: 'Observation', params, patientId });
//     results = results.filter((r) => search.permits({ patientId: r.patient, params: { category: r.categories } }));
//   } catch (err) {
//     if (err instanceof ResourceAccessError) {
//       res.statusCode = err.status;
//       if (err.challenges) res.setHeader('WWW-Authenticate', err.wwwAuthenticate('fhir'));
//     }
//   }
//
// authenticate (401 invalid_token unless said otherwise):
//   - token only from `Authorization: Bearer <b64token>` (scheme case-insensitive, exactly one token);
//     no token -> 401 with a bare `Bearer realm="..."` challenge; a malformed header -> 400 invalid_request.
//   - three dot-separated parts: a JWT (RFC 9068): signature with the issuer's JWKS (cached; an unknown
//     kid refetches, at most every `jwksCooldownSeconds`), iss, aud, typ `at+jwt`, algorithms (ES256),
//     exp/iat/jti/client_id required, clock tolerance 5 s.
//   - anything else: introspection (client_secret_basic), active + audience + bearer required; positive
//     answers cached at most min(30 s, exp - now) keyed by SHA-256 of the token.
//   - keys or introspection unreachable -> 503 temporarily_unavailable (never accepted).
//   - RFC 8705 binding: cnf["x5t#S256"] must equal the presented certificate's thumbprint; no
//     certificate, a mismatch, another confirmation method (e.g. DPoP jkt) -> 401; no cnf -> 401 unless
//     `requireCertificateBinding: false`.
// authorize / authorizeSearch (403 insufficient_scope, `scope` names the minimal scope, e.g.
//   `patient/MedicationRequest.r`): SMART v2 scopes; patient/ scopes only for the token's `patient`
//   (record's patientId must equal it; `Patient/x` and `x` are the same); user/ and system/ scopes need
//   no patient. A search a scope allows only with a filter the search does not specify (e.g.
//   `patient/Observation.rs?category=laboratory` and no `category` parameter) is allowed, and its
//   results must be filtered with `permits` (give it each record's patient and its own values of the
//   parameters scopes filter on, e.g. all its category codes); a search whose parameters contradict
//   every scope is 403. Without a patient, a patient/ scope limits the search to the token's patient.
// requireAuthentication: RFC 9470 step-up (401 insufficient_user_authentication with acr_values/max_age).
// Never log tokens; error descriptions never contain token material.
export {
  bearerToken,
  createResourceVerifier,
  patientIdOf,
  type AccessDecision,
  type AuthenticateRequest,
  type ResourceAccess,
  type ResourceVerifier,
  type ResourceVerifierOptions,
  type SearchAccess,
  type SearchDecision,
  type VerifiedToken,
} from './verifier.ts';
export {
  ResourceAccessError,
  type ResourceAccessErrorOptions,
  type ResourceErrorCode,
  type ResourceErrorStatus,
} from './errors.ts';
export { checkCertificateBinding, peerCertificateDer, x5tS256 } from './binding.ts';
export { type FetchLike, type FetchResponseLike, type IntrospectionOptions } from './introspection.ts';
