// `client add FILE`: registers a client from RFC 7591 metadata (plus our own fields such as
// resource_scope), validated by oidc-provider exactly as the server validates it when loading it.
import { ClientRegistrationError, registerClient } from '../../clients/register.ts';
import { loadConfig } from '../../config.ts';
import {
  CLI_AUDIT, CliError, createAuditLog, createProviderContext, expectPositionals, loadKeyMaterial, parseCommandArgs,
  readJsonFile, withDatabase, type Command,
} from '../context.ts';

export const clientAddCommand: Command = {
  name: 'client add',
  synopsis: 'FILE',
  description: [
    'Register a client from the JSON object in FILE: RFC 7591 metadata (redirect_uris, grant_types,',
    'token_endpoint_auth_method, scope, jwks/jwks_uri, ...) plus resource_scope, the ceiling of resource',
    'server scopes. client_id is generated unless given. For client_secret_basic/client_secret_post',
    '(the default) a secret is generated unless given (at least 32 characters); only its digest is stored.',
    'An existing client_id is refused.',
  ],
  output: '{"client_id":"...","client_secret":"..."} (client_secret only for secret-based clients; shown only this once)',
  async run(args) {
    const { positionals } = parseCommandArgs(this.name, args, {});
    const [file] = expectPositionals(this.name, positionals, ['FILE']);
    const config = loadConfig();
    const metadata = await readJsonFile(file!, 'client metadata file');
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
      throw new CliError(`client metadata file ${file} must hold one JSON object`);
    }
    const material = await loadKeyMaterial(config);
    return withDatabase(config, async (db) => {
      const { provider, clientSecretKey } = await createProviderContext(config, db, material);
      const audit = await createAuditLog(db, material);
      try {
        return await db.transaction(async (tx) => {
          const registered = await registerClient(tx, provider, clientSecretKey, metadata);
          await audit.record({
            type: 'admin.client_registered', outcome: 'success', rule: CLI_AUDIT.rule,
            target: { clientId: registered.client_id }, details: { ...CLI_AUDIT.details },
          }, tx);
          return registered;
        });
      } catch (err) {
        if (err instanceof ClientRegistrationError) throw new CliError(`client refused: ${err.message}`);
        throw err;
      }
    });
  },
};
